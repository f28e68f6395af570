//! Request and response bodies: the byte layout of version 1 of the wire protocol.
//!
//! Every frame on the socket is a 4-byte big-endian length followed by one body (see
//! [`super::codec`]). All integers are big-endian; floats are IEEE-754 binary32, big-endian.
//! The README's "Wire protocol" section documents the same layout for device authors.

use bytes::{Buf, BufMut, Bytes, BytesMut};

pub const VERSION: u8 = 1;
/// Fixed part of a request body, before the token and the image.
pub const REQUEST_HEADER_LEN: usize = 20;
/// Fixed part of a response body, before the variable-length fields.
pub const RESPONSE_HEADER_LEN: usize = 36;
const NO_MODEL: u16 = u16::MAX;

#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub request_id: u64,
    pub client_id: u32,
    /// Side of the image in pixels as the client chose it (0 when the client does not adapt).
    pub resolution: u16,
    /// Shared access token; empty when none.
    pub token: String,
    /// JPEG or PNG bytes.
    pub image: Bytes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Status {
    Ok = 0,
    BadRequest = 1,
    TooLarge = 2,
    Overloaded = 3,
    Internal = 4,
    Unauthorized = 5,
}

impl Status {
    pub fn from_u8(v: u8) -> Option<Status> {
        Some(match v {
            0 => Status::Ok,
            1 => Status::BadRequest,
            2 => Status::TooLarge,
            3 => Status::Overloaded,
            4 => Status::Internal,
            5 => Status::Unauthorized,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::BadRequest => "bad_request",
            Status::TooLarge => "too_large",
            Status::Overloaded => "overloaded",
            Status::Internal => "internal",
            Status::Unauthorized => "unauthorized",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The model that served a request.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelRef {
    pub index: u16,
    pub name: String,
    /// Declared top-1 accuracy, percent.
    pub accuracy: f32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Class {
    pub index: u32,
    pub score: f32,
    pub label: Option<String>,
}

/// Server-side timings in microseconds; `total_us` runs from the frame's arrival to the response
/// being handed to the socket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Timings {
    pub queue_us: u32,
    pub preprocess_us: u32,
    pub inference_us: u32,
    pub total_us: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub request_id: u64,
    pub status: Status,
    pub message: String,
    pub model: Option<ModelRef>,
    pub top: Vec<Class>,
    pub timings: Timings,
}

impl Response {
    pub fn error(request_id: u64, status: Status, message: impl Into<String>) -> Self {
        Self { request_id, status, message: message.into(), model: None, top: Vec::new(), timings: Timings::default() }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("frame of {0} bytes is shorter than the {REQUEST_HEADER_LEN}-byte request header")]
    TooShort(usize),
    #[error("unsupported protocol version {0} (this server speaks {VERSION})")]
    UnsupportedVersion(u8),
    #[error("token length {0} runs past the end of the frame")]
    TokenOverrun(usize),
    #[error("token is not UTF-8")]
    TokenNotUtf8,
    #[error("malformed response: {0}")]
    MalformedResponse(&'static str),
}

/// Best-effort request id of a body that failed to decode, so the error response can be matched.
pub fn peek_request_id(body: &[u8]) -> u64 {
    body.get(4..12).map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes"))).unwrap_or(0)
}

impl Request {
    pub fn encode(&self, out: &mut BytesMut) {
        out.reserve(REQUEST_HEADER_LEN + self.token.len() + self.image.len());
        self.encode_head(out);
        out.put_slice(&self.image);
    }

    /// Everything before the image (header and token), so a sender can write the image straight
    /// from its shared buffer instead of copying it into the frame.
    pub fn encode_head(&self, out: &mut BytesMut) {
        let token = self.token.as_bytes();
        out.put_u8(VERSION);
        out.put_u8(0);
        out.put_u16(u16::try_from(token.len()).expect("token longer than 64 KiB"));
        out.put_u64(self.request_id);
        out.put_u32(self.client_id);
        out.put_u16(self.resolution);
        out.put_u16(0);
        out.put_slice(token);
    }

    /// Decodes one request body. The image is a zero-copy slice of `body`.
    pub fn decode(body: Bytes) -> Result<Request, DecodeError> {
        if body.len() < REQUEST_HEADER_LEN {
            // Check the version first when we can: a v2 client should hear "version", not "short".
            if let Some(&v) = body.first() {
                if v != VERSION {
                    return Err(DecodeError::UnsupportedVersion(v));
                }
            }
            return Err(DecodeError::TooShort(body.len()));
        }
        let mut b = &body[..];
        let version = b.get_u8();
        if version != VERSION {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        let _flags = b.get_u8();
        let token_len = b.get_u16() as usize;
        let request_id = b.get_u64();
        let client_id = b.get_u32();
        let resolution = b.get_u16();
        let _reserved = b.get_u16();
        let token_end = REQUEST_HEADER_LEN + token_len;
        if token_end > body.len() {
            return Err(DecodeError::TokenOverrun(token_len));
        }
        let token = std::str::from_utf8(&body[REQUEST_HEADER_LEN..token_end]).map_err(|_| DecodeError::TokenNotUtf8)?.to_string();
        Ok(Request { request_id, client_id, resolution, token, image: body.slice(token_end..) })
    }
}

fn put_str_u16(out: &mut BytesMut, s: &str) {
    let b = truncate_utf8(s, u16::MAX as usize);
    out.put_u16(b.len() as u16);
    out.put_slice(b);
}

/// Longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn truncate_utf8(s: &str, max: usize) -> &[u8] {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s.as_bytes()[..end]
}

impl Response {
    pub fn encode(&self, out: &mut BytesMut) {
        let name = self.model.as_ref().map(|m| truncate_utf8(&m.name, u8::MAX as usize)).unwrap_or(&[]);
        let message = truncate_utf8(&self.message, u16::MAX as usize);
        let top = &self.top[..self.top.len().min(u8::MAX as usize)];
        out.put_u8(VERSION);
        out.put_u8(self.status as u8);
        out.put_u16(self.model.as_ref().map_or(NO_MODEL, |m| m.index));
        out.put_u64(self.request_id);
        out.put_f32(self.model.as_ref().map_or(f32::NAN, |m| m.accuracy));
        let t = self.timings;
        for v in [t.queue_us, t.preprocess_us, t.inference_us, t.total_us] {
            out.put_u32(v);
        }
        out.put_u8(name.len() as u8);
        out.put_u8(top.len() as u8);
        out.put_u16(message.len() as u16);
        out.put_slice(name);
        out.put_slice(message);
        for c in top {
            out.put_u32(c.index);
            out.put_f32(c.score);
            put_str_u16(out, c.label.as_deref().unwrap_or(""));
        }
    }

    pub fn decode(body: &[u8]) -> Result<Response, DecodeError> {
        use DecodeError::MalformedResponse as M;
        if body.len() < RESPONSE_HEADER_LEN {
            return Err(M("shorter than the header"));
        }
        let mut b = body;
        let version = b.get_u8();
        if version != VERSION {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        let status = Status::from_u8(b.get_u8()).ok_or(M("unknown status"))?;
        let index = b.get_u16();
        let request_id = b.get_u64();
        let accuracy = b.get_f32();
        let timings = Timings { queue_us: b.get_u32(), preprocess_us: b.get_u32(), inference_us: b.get_u32(), total_us: b.get_u32() };
        let name_len = b.get_u8() as usize;
        let top_len = b.get_u8() as usize;
        let msg_len = b.get_u16() as usize;
        let take_str = |b: &mut &[u8], n: usize| -> Result<String, DecodeError> {
            if b.len() < n {
                return Err(M("string runs past the end"));
            }
            let s = std::str::from_utf8(&b[..n]).map_err(|_| M("string is not UTF-8"))?.to_string();
            b.advance(n);
            Ok(s)
        };
        let name = take_str(&mut b, name_len)?;
        let message = take_str(&mut b, msg_len)?;
        let mut top = Vec::with_capacity(top_len);
        for _ in 0..top_len {
            if b.len() < 10 {
                return Err(M("top-k entry runs past the end"));
            }
            let index = b.get_u32();
            let score = b.get_f32();
            let label_len = b.get_u16() as usize;
            let label = take_str(&mut b, label_len)?;
            top.push(Class { index, score, label: (!label.is_empty()).then_some(label) });
        }
        let model = (index != NO_MODEL).then_some(ModelRef { index, name, accuracy });
        Ok(Response { request_id, status, message, model, top, timings })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> Request {
        Request { request_id: 42, client_id: 7, resolution: 160, token: "s3cret".into(), image: Bytes::from_static(b"\xff\xd8jpeg") }
    }

    #[test]
    fn request_roundtrip() {
        let mut buf = BytesMut::new();
        request().encode(&mut buf);
        assert_eq!(buf.len(), REQUEST_HEADER_LEN + 6 + 6);
        assert_eq!(Request::decode(buf.freeze()).unwrap(), request());
    }

    #[test]
    fn request_layout_is_as_documented() {
        let mut buf = BytesMut::new();
        Request { token: String::new(), ..request() }.encode(&mut buf);
        assert_eq!(&buf[..REQUEST_HEADER_LEN], &[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 42, 0, 0, 0, 7, 0, 160, 0, 0]);
        assert_eq!(peek_request_id(&buf), 42);
    }

    #[test]
    fn request_errors() {
        assert_eq!(Request::decode(Bytes::from_static(&[1, 0, 0])), Err(DecodeError::TooShort(3)));
        assert_eq!(Request::decode(Bytes::new()), Err(DecodeError::TooShort(0)));
        assert_eq!(Request::decode(Bytes::from_static(&[9, 0])), Err(DecodeError::UnsupportedVersion(9)));
        let mut buf = BytesMut::new();
        request().encode(&mut buf);
        buf[0] = 2;
        assert_eq!(Request::decode(buf.clone().freeze()), Err(DecodeError::UnsupportedVersion(2)));
        buf[0] = 1;
        buf[2..4].copy_from_slice(&1000u16.to_be_bytes());
        assert_eq!(Request::decode(buf.clone().freeze()), Err(DecodeError::TokenOverrun(1000)));
        buf[2..4].copy_from_slice(&2u16.to_be_bytes());
        buf[20] = 0xff;
        assert_eq!(Request::decode(buf.freeze()), Err(DecodeError::TokenNotUtf8));
    }

    #[test]
    fn response_roundtrip() {
        let r = Response {
            request_id: u64::MAX - 1,
            status: Status::Ok,
            message: String::new(),
            model: Some(ModelRef { index: 3, name: "mobilenet_v1_1.0_128".into(), accuracy: 65.2 }),
            top: vec![Class { index: 5, score: 0.5, label: Some("tabby cat".into()) }, Class { index: 999, score: 0.25, label: None }],
            timings: Timings { queue_us: 1, preprocess_us: 2, inference_us: 3, total_us: 6 },
        };
        let mut buf = BytesMut::new();
        r.encode(&mut buf);
        assert_eq!(Response::decode(&buf).unwrap(), r);
    }

    #[test]
    fn error_response_roundtrip_and_truncation_detected() {
        let r = Response::error(9, Status::TooLarge, "frame of 9999999 bytes exceeds 8388608");
        let mut buf = BytesMut::new();
        r.encode(&mut buf);
        let back = Response::decode(&buf).unwrap();
        assert_eq!(back.status, Status::TooLarge);
        assert!(back.model.is_none());
        assert_eq!(back.message, r.message);
        assert!(Response::decode(&buf[..buf.len() - 1]).is_err());
        assert!(Response::decode(&buf[..10]).is_err());
    }

    /// Cheap always-on fuzzing: random mutations of valid frames never panic a decoder.
    /// (`fuzz/` has the coverage-guided version.)
    #[test]
    fn mutated_frames_never_panic() {
        let mut req = BytesMut::new();
        request().encode(&mut req);
        let mut resp = BytesMut::new();
        Response {
            request_id: 1,
            status: Status::Ok,
            message: "m".into(),
            model: Some(ModelRef { index: 0, name: "n".into(), accuracy: 1.0 }),
            top: vec![Class { index: 1, score: 0.5, label: Some("l".into()) }],
            timings: Timings::default(),
        }
        .encode(&mut resp);
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut rand = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            for base in [&req, &resp] {
                let mut b = base.to_vec();
                let len = (rand() as usize) % (b.len() + 8);
                b.resize(len, 0);
                for _ in 0..(rand() % 4) {
                    if !b.is_empty() {
                        let i = rand() as usize % b.len();
                        b[i] = rand() as u8;
                    }
                }
                let _ = Request::decode(Bytes::from(b.clone()));
                let _ = Response::decode(&b);
            }
        }
    }

    #[test]
    fn long_strings_are_cut_on_char_boundaries() {
        let s = "é".repeat(200); // 400 bytes
        assert_eq!(truncate_utf8(&s, 255).len(), 254);
    }
}
