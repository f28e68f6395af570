//! Any bytes as an uploaded image: decode under the pixel cap, then shape a tensor.
#![no_main]

use edgeinfer::engine::preprocess;
use edgeinfer::models::{ChannelOrder, InputSpec, Layout};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // A small cap keeps each run fast; the header check is what is being exercised.
    if let Ok(img) = preprocess::decode(data, 1 << 20) {
        let spec = InputSpec { name: "input".into(), size: 32, layout: Layout::Nchw, channels: ChannelOrder::Rgb, mean: [127.5; 3], std: [127.5; 3] };
        assert_eq!(preprocess::to_tensor(&img, &spec).len(), 3 * 32 * 32);
    }
});
