//! Frames of the wire protocol built by hand, for the fixtures that speak it
//! without the library. The names come from `docs/protocol.md` §2, not from
//! the library: the tests use the format as any other implementation would.

/// The frame kinds used here (`docs/protocol.md` §2; 23 to 255 are reserved).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// `{"protocol": N}`: the first frame each way.
    Hello = 1,
    /// Empty: the worker is ready.
    Ready = 2,
    /// Empty: finish and exit, or leaving of one's own accord.
    Disconnect = 3,
    /// One JSON value.
    Message = 4,
    /// `{"id": N, "address": A}`: a worker asks for a listening socket.
    Listen = 5,
    /// The answer to a listen, with the socket attached.
    Listening = 6,
    /// `{"listener": N}`, with an accepted connection attached.
    Connection = 7,
    /// An 8-byte request id, then one JSON value.
    Request = 8,
    /// The request's id, a status byte, then one JSON value.
    Reply = 9,
    /// Raw bytes (protocol version 2).
    Bytes = 13,
    /// One byte: the next frame comes with this many fds, attached to this
    /// frame's first byte (protocol version 3).
    Fds = 14,
    /// An 8-byte length: a bytes message in the sealed memfd attached
    /// (protocol version 3).
    Sealed = 15,
    /// An 8-byte request id, then a handler's name; the body is the next
    /// frame (protocol version 3).
    BytesRequest = 16,
    /// The request's id, a status byte, then (status 1) the error as a JSON
    /// string; with status 0 the body is the next frame (protocol version 3).
    BytesReply = 17,
    /// A 4-byte id and an 8-byte length: a segment, its memfd attached
    /// (primary to worker; protocol version 3).
    Segment = 18,
    /// 8-byte tokens: lent payloads released (worker to primary).
    Release = 20,
    /// An 8-byte token, offset and length: bytes of a lent payload sent
    /// back (worker to primary).
    Returned = 21,
}

/// A kind byte that names no kind (a reserved one).
pub const UNKNOWN_KIND: u8 = 0xee;

/// The 5-byte head of a frame: `length` (u32, big-endian, counting the kind
/// byte and the payload), then the kind byte.
pub fn head(length: u32, kind: u8) -> [u8; 5] {
    let [a, b, c, d] = length.to_be_bytes();
    [a, b, c, d, kind]
}

/// A whole frame of `kind` carrying `payload`.
///
/// # Panics
///
/// When the payload does not fit a frame (4 GiB).
pub fn frame(kind: Kind, payload: &[u8]) -> Vec<u8> {
    let length = u32::try_from(payload.len() + 1).expect("a payload under 4 GiB");
    [&head(length, kind as u8)[..], payload].concat()
}

/// The hello frame of protocol `version`.
pub fn hello(version: u32) -> Vec<u8> {
    frame(
        Kind::Hello,
        format!(r#"{{"protocol":{version}}}"#).as_bytes(),
    )
}

/// Reads one frame; returns its kind byte and its payload.
///
/// # Errors
///
/// When the reader fails or ends in the middle of the frame.
pub fn read(reader: &mut impl std::io::Read) -> std::io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    reader.read_exact(&mut head)?;
    let [a, b, c, d, kind] = head;
    let length = u32::from_be_bytes([a, b, c, d]).saturating_sub(1);
    let mut payload = vec![0u8; length as usize];
    reader.read_exact(&mut payload)?;
    Ok((kind, payload))
}
