//! What the fixture programs do, named: the tests and the fixtures share these
//! enums, so a test names `Mode::Echo` and a misspelt mode does not compile.

/// Declares an enum of unit variants, each with its command-line name, and
/// `as_str`, `Display` and `FromStr` for it.
macro_rules! named {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $($(#[$doc:meta])* $variant:ident = $text:literal,)*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            $($(#[$doc])* $variant,)*
        }

        impl $name {
            /// The name on the command line.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)*
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;

            fn from_str(name: &str) -> Result<Self, String> {
                match name {
                    $($text => Ok(Self::$variant),)*
                    other => Err(format!("unknown {} {other:?}", stringify!($name))),
                }
            }
        }
    };
}

named! {
    /// The first argument of `fixture-worker`: how the worker behaves.
    pub enum Mode {
        /// Echoes messages as `{"echo": message}`; obeys test commands; answers test requests.
        Echo = "echo",
        /// As `Echo`, once it has sent `"ready"` and a typed `early` message while initializing.
        BeforeReady = "before-ready",
        /// As `Echo`, but never ready: it prevents its own `InitializeComplete`.
        NeverReady = "never-ready",
        /// Its initialization fails.
        InitFail = "init-fail",
        /// Exits with status 3 at once.
        ExitAtStart = "exit-at-start",
        /// Hello and ready by hand, then ignores disconnect and SIGTERM (its child too), forever.
        Hung = "hung",
        /// `serve ADDRESS [COUNT [DELAY_MS]]`: answers HTTP on ADDRESS with `worker ID`.
        Serve = "serve",
        /// `listen-all COUNT ADDRESS…`: listens COUNT times on each ADDRESS (`{id}` in it: the
        /// worker's id, `{n}`: 0 to COUNT-1), reports `{"listens": ["ok" or the error kind, …]}`,
        /// and holds the sockets until asked to leave.
        ListenAll = "listen-all",
        /// Asks the primary `{"type": "add", "a": 2, "b": 3}`, sends back `{"sum": reply}`.
        Ask = "ask",
        /// Asks the primary's bytes handler `reverse` for 3 bytes and for 2 MiB (sealed), and
        /// the unknown `nobody`; sends back `{"small": ok, "large": ok, "unknown": error}`
        /// (ok: the reply is the body reversed).
        AskBytes = "ask-bytes",
        /// By hand: sends COUNT requests `{"type": "double", "n": i}` without reading, waits
        /// HOLD_MS, then reads every reply and sends `{"replies": R, "distinct": D, "wrong": W}`.
        AskWithoutReading = "ask-without-reading",
        /// `bad-after-first CASE`: worker 1 is `Echo`, the others send the [`BadInput`] CASE.
        BadAfterFirst = "bad-after-first",
        /// As `Echo`, with an `on_destroy` cleanup that panics.
        PanicInCleanup = "panic-in-cleanup",
        /// By hand, speaking protocol version 1: hello and ready, echoes each message as
        /// `{"echo": message}`, leaves on disconnect.
        OldVersion = "old-version",
    }
}

named! {
    /// What a worker in [`Mode::BadAfterFirst`] sends (after hello and ready,
    /// unless the case is about the handshake) to break the protocol.
    pub enum BadInput {
        /// A message before its hello.
        NoHello = "no-hello",
        /// A hello with protocol version 99.
        WrongVersion = "wrong-version",
        /// A message frame head whose length is `0xffff_ffff`.
        HugeLength = "huge-length",
        /// A frame head of length 5 and an unknown kind (`0xee`), then text.
        Garbage = "garbage",
        /// A message that is not JSON (an object cut short).
        InvalidJson = "invalid-json",
        /// A hello naming the `msgpack` codec, ready, then a message that is
        /// not MessagePack (an array of 2 with one element).
        InvalidMessagePack = "invalid-msgpack",
        /// A message with a JSON string whose bytes are not UTF-8.
        InvalidUtf8 = "invalid-utf8",
        /// A message of arrays nested 100 000 deep.
        DeepJson = "deep-json",
        /// [`FLOOD_MESSAGES`] valid messages of 1 KiB, as fast as the socket takes them.
        Flood = "flood",
        /// 64 KiB of random bytes (the seed goes to stderr), then the channel closes.
        Random = "random",
        /// A bytes frame head whose length is `0xffff_ffff`.
        HugeBytes = "huge-bytes",
        /// The first 9 bytes of a message frame, then the channel closes.
        Truncated = "truncated",
        /// An fds frame announcing `MAX_FDS + 1` fds, with them, then a message.
        TooManyFds = "too-many-fds",
        /// A sealed frame whose memfd is not sealed.
        UnsealedMemfd = "unsealed-memfd",
        /// A sealed frame announcing one byte more than its (sealed) memfd holds.
        ShortMemfd = "short-memfd",
        /// Hello (version 3), ready, then a bytes request's head followed by a message,
        /// not by its body.
        BytesRequestWithoutBody = "bytes-request-without-body",
        /// Hello (version 3), ready, then a bytes reply whose status byte is 2.
        BadBytesReply = "bad-bytes-reply",
        /// Hello (version 1), ready, then a whole bytes request, which version 1 lacks.
        BytesRequestFromVersion1 = "bytes-request-from-version-1",
        /// A release of token 7, never lent.
        ForgedRelease = "forged-release",
        /// A returned frame of token 7, never lent.
        ForgedReturned = "forged-returned",
        /// A segment frame with a sealed memfd: only a primary lends.
        WorkerSegment = "worker-segment",
    }
}

/// How many messages of 1 KiB a [`BadInput::Flood`] worker sends (256 MiB).
pub const FLOOD_MESSAGES: u64 = 1024 * 256;

named! {
    /// The first argument of `fixture-primary` when it is not a worker count
    /// (`fixture-primary N [FLAG…]`: N workers that re-execute it, see
    /// [`PrimaryFlag`]).
    pub enum PrimaryMode {
        /// `worker MODE N [FLAG…]`: N `fixture-worker MODE` workers.
        Worker = "worker",
        /// `serve ADDRESS N`: N `Mode::Serve` workers; prints `listening ADDRESS` once all listen.
        Serve = "serve",
    }
}

named! {
    /// The flags after the worker count of `fixture-primary`.
    pub enum PrimaryFlag {
        /// Deletes its own binary before starting its workers.
        DeleteSelf = "--delete-self",
        /// Shuts down once its workers are ready (and prints `shut down`).
        ThenShutDown = "--then-shut-down",
        /// Sends its workers' output to `/dev/null`.
        Silent = "--silent",
    }
}
