//! Arbitrary bytes through the control protocol's decoder (`proto::decode`) as a message in
//! either direction: it must not panic, and a message it accepts must encode (`proto::encode`)
//! to a frame that decodes to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use linerate_proto::{self as proto, ControllerMsg, NodeMsg};

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = proto::decode::<NodeMsg>(data) {
        let frame = proto::encode(&msg).expect("a decoded node message encodes");
        assert_eq!(proto::decode::<NodeMsg>(&frame), Ok(msg));
    }
    if let Ok(msg) = proto::decode::<ControllerMsg>(data) {
        let frame = proto::encode(&msg).expect("a decoded controller message encodes");
        assert_eq!(proto::decode::<ControllerMsg>(&frame), Ok(msg));
    }
});
