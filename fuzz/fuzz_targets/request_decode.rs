//! Any bytes as a request (and response) frame body: decoding must return, never panic.
#![no_main]

use edgeinfer::protocol::{Request, Response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = Request::decode(bytes::Bytes::copy_from_slice(data)) {
        // What decodes must survive a round trip unchanged.
        let mut out = bytes::BytesMut::new();
        req.encode(&mut out);
        assert_eq!(Request::decode(out.freeze()).as_ref(), Ok(&req));
    }
    let _ = Response::decode(data);
});
