//! Declares event types as [`Topic`](crate::Topic)s of a host, and the host's
//! stream enum, from one list.

/// `topics!(Host => StreamEnum { Type: "name" [once Kind] => default_action, ... })`
macro_rules! topics {
    ($host:ty => $(#[$stream_meta:meta])* $stream:ident {
        $($event:ident: $name:literal $(once $once:ident)? => $action:ident;)*
    }) => {
        $(#[$stream_meta])*
        #[derive(Debug, Clone)]
        #[non_exhaustive]
        pub enum $stream {
            $(
                #[doc = concat!("The `", $name, "` event.")]
                $event($event),
            )*
        }

        impl $stream {
            /// The original's name of the event, e.g. `"workerExit"`.
            pub fn name(&self) -> &'static str {
                match self {
                    $(Self::$event(_) => $name,)*
                }
            }
        }

        $(
            impl $crate::events::Topic for $event {
                type Host = $host;
                const NAME: &'static str = $name;
            }

            impl $crate::events::sealed::TopicImpl for $event {
                $(const ONCE: $crate::events::sealed::Once = $crate::events::sealed::Once::$once;)?
                fn complete(host: &mut $host, event: &Self) {
                    host.$action(event);
                }
                fn into_stream(self) -> $stream {
                    $stream::$event(self)
                }
            }
        )*
    };
}

pub(crate) use topics;
