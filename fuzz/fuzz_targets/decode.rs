//! The decoders of both wires (framed, and Node's JSON lines) on any bytes:
//! never a panic, and the same frames and outcome whether the bytes arrive
//! at once or in pieces. `cargo +nightly fuzz run decode` (see README.md).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the wire (low bit) and the size of the pieces.
    let Some((&choice, bytes)) = data.split_first() else {
        return;
    };
    let piece = usize::from(choice >> 1) + 1;
    isotropic_cluster::internals::check_any_split(choice & 1 == 1, bytes, piece, 4096);
});
