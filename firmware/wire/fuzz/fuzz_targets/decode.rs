//! Untrusted bytes through the whole receive path: layout check, tag, body decode.
//! Half of the inputs are re-signed with the golden key so the fuzzer reaches the body decoder.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wire::{DeviceKey, Frame, TAG_LEN, golden::KEY};

fuzz_target!(|data: &[u8]| {
    let key = DeviceKey::from_bytes(KEY);
    let _ = wire::open(data, &key);
    if let Ok(frame) = Frame::new_checked(data) {
        let mut signed = data.to_vec();
        let end = signed.len() - TAG_LEN;
        let tag = key.tag(&signed[..end]);
        signed[end..].copy_from_slice(&tag);
        if let Ok(msg) = wire::open(&signed, &key) {
            assert_eq!(msg.header, frame.header());
        }
    }
});
