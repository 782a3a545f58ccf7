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
            /// Not an event: the stream's reader fell behind and these many
            /// events were skipped in its place (handlers saw them).
            Skipped($crate::events::Skipped),
        }

        impl $stream {
            /// The original's name of the event, e.g. `"workerExit"`
            /// (`"skipped"` for [`Skipped`](Self::Skipped)).
            pub fn name(&self) -> &'static str {
                match self {
                    $(Self::$event(_) => $name,)*
                    Self::Skipped(_) => "skipped",
                }
            }
        }

        impl From<$crate::events::Skipped> for $stream {
            fn from(skipped: $crate::events::Skipped) -> Self {
                Self::Skipped(skipped)
            }
        }

        /// The events' places in the host's hub, in list order.
        #[allow(dead_code)]
        enum Slot {
            $($event,)*
        }

        $(
            impl $crate::events::sealed::SealedTopic for $event {
                const SLOT: usize = Slot::$event as usize;
            }

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

/// `host!(Context, stream: StreamEnum, inbound: MessageEvent, handle: Handle,
/// builder: Builder)`: makes `Context` (with fields `hub`, `stream` and
/// `mailbox`, and an [`Actor`](crate::actor::Actor), which decides what a
/// handler's panic does) an event host, and gives the context, the handle (field
/// `mailbox`) and the builder (field `hub`) the [`Subscribe`] methods.
///
/// [`Subscribe`]: crate::Subscribe
macro_rules! host {
    ($host:ty, stream: $stream:ty, inbound: $inbound:ty, handle: $handle:ty, builder: $builder:ty) => {
        impl $crate::events::sealed::HostImpl for $host {
            type Stream = $stream;
            type Inbound = $inbound;
            fn hub(&mut self) -> &mut $crate::events::Hub {
                &mut self.hub
            }
            fn stream(&self) -> &$crate::events::StreamSource<$stream> {
                &self.stream
            }
            fn handler_panicked(&mut self, panic: $crate::events::HandlerPanic) {
                <$host as $crate::actor::Actor>::handler_panicked(self, panic);
            }
        }

        impl $crate::events::Subscribe for &mut $host {
            type Host = $host;
            type Output = $crate::events::Subscription;
            fn subscribe_with<E: $crate::events::Topic<Host = $host>>(
                self,
                key: $crate::events::SubscriptionKey,
                once: bool,
                handler: $crate::events::Handler<E>,
            ) -> Self::Output {
                $crate::events::subscribe(self, key.clone(), once, handler);
                self.mailbox.subscription(key)
            }
            fn route_with(
                self,
                key: $crate::events::SubscriptionKey,
                route: $crate::events::sealed::RouteFn<$inbound>,
            ) -> Self::Output {
                self.hub.insert_route(key.clone(), route);
                self.mailbox.subscription(key)
            }
        }

        impl $crate::events::Subscribe for &$handle {
            type Host = $host;
            type Output = $crate::events::Subscription;
            fn subscribe_with<E: $crate::events::Topic<Host = $host>>(
                self,
                key: $crate::events::SubscriptionKey,
                once: bool,
                handler: $crate::events::Handler<E>,
            ) -> Self::Output {
                self.mailbox.subscribe(key, once, handler)
            }
            fn route_with(
                self,
                key: $crate::events::SubscriptionKey,
                route: $crate::events::sealed::RouteFn<$inbound>,
            ) -> Self::Output {
                self.mailbox.route(key, route)
            }
        }

        impl $crate::events::Subscribe for $builder {
            type Host = $host;
            type Output = Self;
            fn subscribe_with<E: $crate::events::Topic<Host = $host>>(
                mut self,
                key: $crate::events::SubscriptionKey,
                once: bool,
                handler: $crate::events::Handler<E>,
            ) -> Self {
                self.hub.insert(key, once, handler);
                self
            }
            fn route_with(
                mut self,
                key: $crate::events::SubscriptionKey,
                route: $crate::events::sealed::RouteFn<$inbound>,
            ) -> Self {
                self.hub.insert_route(key, route);
                self
            }
        }
    };
}

pub(crate) use host;
