//! `StepMessage::decode` on any bytes: a value or a `DecodeError`, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nodewire::event::Decode as _;

fuzz_target!(|data: &[u8]| {
    let _ = nodewire::event::StepMessage::decode(data);
});
