//! Image bytes to input tensor: format check, a pixel cap read from the header before any pixel
//! is decoded, decode, resize, normalise. Runs on blocking threads, never on the async workers.

use std::io::Cursor;

use image::{imageops::FilterType, ImageFormat, ImageReader, RgbImage};

use crate::models::{ChannelOrder, InputSpec, Layout};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    #[error("empty image")]
    Empty,
    #[error("not a JPEG or PNG image")]
    UnsupportedFormat,
    #[error("image is {width}x{height} = {} pixels, over the limit of {max} pixels", *width as u64 * *height as u64)]
    TooLarge { width: u32, height: u32, max: u64 },
    #[error("cannot decode image: {0}")]
    Decode(String),
}

/// Decodes a JPEG or PNG, refusing images over `max_pixels` from their header alone.
pub fn decode(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    let format = match image::guess_format(bytes) {
        Ok(f @ (ImageFormat::Jpeg | ImageFormat::Png)) => f,
        _ => return Err(ImageError::UnsupportedFormat),
    };
    let reader = || ImageReader::with_format(Cursor::new(bytes), format);
    let (width, height) = reader().into_dimensions().map_err(|e| ImageError::Decode(e.to_string()))?;
    if width as u64 * height as u64 > max_pixels {
        return Err(ImageError::TooLarge { width, height, max: max_pixels });
    }
    if width == 0 || height == 0 {
        return Err(ImageError::Decode(format!("image has zero size ({width}x{height})")));
    }
    let mut r = reader();
    let mut limits = image::Limits::default();
    // Belt and braces: the decoder itself also refuses to allocate past the cap (RGBA 16-bit worst case).
    limits.max_alloc = Some(max_pixels.saturating_mul(8).max(1 << 20));
    r.limits(limits);
    let img = r.decode().map_err(|e| ImageError::Decode(e.to_string()))?;
    Ok(img.into_rgb8())
}

/// Resizes to the model's input side and lays the pixels out as the model expects.
pub fn to_tensor(img: &RgbImage, input: &InputSpec) -> Vec<f32> {
    let side = input.size;
    let resized;
    let img = if img.width() == side && img.height() == side {
        img
    } else {
        resized = image::imageops::resize(img, side, side, FilterType::Triangle);
        &resized
    };
    let plane = (side * side) as usize;
    let mut out = vec![0f32; plane * 3];
    // Source channel for each model channel.
    let order = match input.channels {
        ChannelOrder::Rgb => [0, 1, 2],
        ChannelOrder::Bgr => [2, 1, 0],
    };
    let scale: [f32; 3] = std::array::from_fn(|c| 1.0 / input.std[c]);
    for (i, px) in img.pixels().enumerate() {
        for c in 0..3 {
            let v = (px.0[order[c]] as f32 - input.mean[c]) * scale[c];
            match input.layout {
                Layout::Nchw => out[c * plane + i] = v,
                Layout::Nhwc => out[i * 3 + c] = v,
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 200]));
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), ImageFormat::Png).unwrap();
        out
    }

    fn spec(layout: Layout, channels: ChannelOrder, size: u32) -> InputSpec {
        InputSpec { name: "input".into(), size, layout, channels, mean: [0.0; 3], std: [1.0; 3] }
    }

    #[test]
    fn decodes_png_and_jpeg() {
        assert_eq!(decode(&png(7, 5), 1000).unwrap().dimensions(), (7, 5));
        let mut jpg = Vec::new();
        RgbImage::new(16, 8).write_to(&mut Cursor::new(&mut jpg), ImageFormat::Jpeg).unwrap();
        assert_eq!(decode(&jpg, 1000).unwrap().dimensions(), (16, 8));
    }

    #[test]
    fn refuses_bad_input_clearly() {
        assert_eq!(decode(b"", 10), Err(ImageError::Empty));
        assert_eq!(decode(b"hello, not an image", 10), Err(ImageError::UnsupportedFormat));
        let gif = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;";
        assert_eq!(decode(gif, 10), Err(ImageError::UnsupportedFormat));
        let p = png(8, 8);
        assert!(matches!(decode(&p[..p.len() / 2], 1000), Err(ImageError::Decode(_))));
    }

    #[test]
    fn pixel_cap_is_checked_from_the_header() {
        // A PNG header claiming 100000 x 100000 with no pixel data: refused without decoding.
        let mut p = png(1, 1);
        p[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        p[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        let crc = crc32fast::hash(&p[12..29]);
        p[29..33].copy_from_slice(&crc.to_be_bytes());
        let err = decode(&p, 16_777_216).unwrap_err();
        assert_eq!(err, ImageError::TooLarge { width: 100_000, height: 100_000, max: 16_777_216 });
        assert!(err.to_string().contains("10000000000 pixels"));
    }

    #[test]
    fn tensor_layouts() {
        let img = RgbImage::from_fn(2, 2, |x, y| image::Rgb([10 * (x + 2 * y) as u8, 1, 2]));
        let nchw = to_tensor(&img, &spec(Layout::Nchw, ChannelOrder::Rgb, 2));
        assert_eq!(nchw, vec![0.0, 10.0, 20.0, 30.0, 1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0]);
        let nhwc = to_tensor(&img, &spec(Layout::Nhwc, ChannelOrder::Bgr, 2));
        assert_eq!(&nhwc[..6], &[2.0, 1.0, 0.0, 2.0, 1.0, 10.0]);
    }

    #[test]
    fn resizes_and_normalises() {
        let img = RgbImage::from_pixel(50, 30, image::Rgb([255, 0, 127]));
        let s = InputSpec { mean: [127.5; 3], std: [127.5; 3], ..spec(Layout::Nchw, ChannelOrder::Rgb, 8) };
        let t = to_tensor(&img, &s);
        assert_eq!(t.len(), 3 * 64);
        assert!((t[0] - 1.0).abs() < 1e-6 && (t[64] + 1.0).abs() < 1e-6 && t[128].abs() < 0.01);
    }
}
