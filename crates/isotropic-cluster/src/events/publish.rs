//! Running events: a publish through its stages, the subscribing that calls
//! late subscribers of once-only events, and typed routing. Every handler
//! runs under [`catch`]: its panic goes to the host
//! ([`HostImpl::handler_panicked`]), and the event goes on as if the handler
//! had returned.

use std::any::TypeId;
use std::panic::AssertUnwindSafe;

use super::event::{Control, Event, Handler, RouteFn, Stage, Topic};
use super::host::{HostImpl, Once, TopicImpl};
use super::hub::TopicIndex;
use super::key::SubscriptionKey;
use super::panic::{HandlerPanic, catch};
use crate::{Message, MessageError};

/// Publishes `data` on `host`, running every stage (see the module docs).
pub(crate) fn publish<E: TopicImpl>(host: &mut E::Host, data: E) {
    let topic = TypeId::of::<E>();
    // (Only a once-only event can have happened.)
    if E::ONCE != Once::No && host.hub().happened(topic) {
        return;
    }
    let mut stored_here = false;
    if E::ONCE == Once::Publish {
        host.hub().store(&data);
        stored_here = true;
    }
    let mut control = Control::default();
    // The stages in order, each saying whether the event goes on.
    let _ = handlers(host, Stage::Before, &data, &mut control)
        && handlers(host, Stage::On, &data, &mut control)
        && complete(host, &data, &mut control, &mut stored_here)
        && handlers(host, Stage::After, &data, &mut control);
    if stored_here {
        let blocked = control.prevented[control.stage.index()];
        host.hub().set_blocked(topic, blocked);
    }
}

/// Publishes the events `next` gives, one after the other, each as
/// [`publish`] would, until it gives `None`. Between them, the handlers of
/// `E` stay taken out of the hub for as long as no stage handler is added
/// or removed ([`Held`]), rather than each being taken out and put back for
/// each event: a run of bytes messages publishes thousands in a row.
///
/// Two differences, neither reachable from the bytes events that use it: a
/// publish of `E` nested in the run (by a handler, a default action or the
/// host's panic hook) would not see the held handlers; and a held handler
/// removed while another runs is dropped once that one returns, not at once.
pub(crate) fn publish_each<E: TopicImpl>(
    host: &mut E::Host,
    mut next: impl FnMut(&mut E::Host) -> Option<E>,
) {
    if E::ONCE != Once::No {
        while let Some(data) = next(host) {
            publish(host, data);
        }
        return;
    }
    let mut held = Held::default();
    // (A panic out of `next` or a hook still puts the handlers back.)
    let run = std::panic::catch_unwind(AssertUnwindSafe(|| {
        while let Some(data) = next(host) {
            held.renew(host);
            let mut control = Control::default();
            let _ = held_stage(host, Stage::Before, &data, &mut control, &mut held)
                && held_stage(host, Stage::On, &data, &mut control, &mut held)
                && complete(host, &data, &mut control, &mut false)
                && held_stage(host, Stage::After, &data, &mut control, &mut held);
        }
    }));
    held.release(host);
    if let Err(panic) = run {
        std::panic::resume_unwind(panic);
    }
}

/// The handlers of `E` taken out of the hub by [`publish_each`], valid
/// while the hub's [`version`](super::Hub::version) is the one they were
/// taken at.
struct Held<E: Topic> {
    /// The hub's version when taken; `None` when nothing is held.
    version: Option<u64>,
    /// By stage, in subscription order.
    stages: [Vec<(u64, Box<Handler<E>>)>; 4],
}

impl<E: Topic> Default for Held<E> {
    fn default() -> Self {
        Self {
            version: None,
            stages: Default::default(),
        }
    }
}

impl<E: TopicImpl> Held<E> {
    /// Whether the handlers held are those subscribed now.
    fn current(&self, host: &mut E::Host) -> bool {
        self.version == Some(host.hub().version())
    }

    /// Makes sure the handlers held are current: those held at an older
    /// version go back, and the current ones are taken (unless one of them
    /// is once-only: then none are held).
    fn renew(&mut self, host: &mut E::Host) {
        if self.current(host) {
            return;
        }
        self.release(host);
        let hub = host.hub();
        let Some(taken) = hub.take_all(TopicIndex(E::SLOT)) else {
            return;
        };
        self.version = Some(hub.version());
        for (held, taken) in self.stages.iter_mut().zip(taken) {
            for (id, handler) in taken {
                match handler.downcast::<Handler<E>>() {
                    Ok(handler) => held.push((id, handler)),
                    Err(other) => hub.discard(other),
                }
            }
        }
    }

    /// Puts the handlers held back into the hub (those whose subscription
    /// was removed meanwhile are dropped).
    fn release(&mut self, host: &mut E::Host) {
        if self.version.take().is_none() {
            return;
        }
        let slots = TopicIndex(E::SLOT);
        for stage in [Stage::Before, Stage::On, Stage::Complete, Stage::After] {
            for (id, handler) in self.stages[stage.index()].drain(..) {
                host.hub().put_back((slots, stage), id, handler);
            }
        }
    }
}

/// Runs `stage` of a publish of [`publish_each`], with the handlers held
/// while they are current (from the hub as [`handlers`] would otherwise);
/// whether the event goes on.
fn held_stage<E: TopicImpl>(
    host: &mut E::Host,
    stage: Stage,
    data: &E,
    control: &mut Control,
    held: &mut Held<E>,
) -> bool {
    if !held.current(host) {
        // (Changed since the last stage, by the default action say.)
        held.release(host);
        return handlers(host, stage, data, control);
    }
    if !enter(control, stage) {
        return false;
    }
    let mut at = 0;
    while let Some((id, handler)) = held.stages[stage.index()].get_mut(at) {
        let id = *id;
        let outcome = call(host, data, control, handler);
        if control.unsubscribed {
            let (_, handler) = held.stages[stage.index()].remove(at);
            host.hub()
                .unsubscribed((TopicIndex(E::SLOT), stage), id, handler);
        } else {
            at += 1;
        }
        report::<E>(host, stage, outcome);
        if !held.current(host) {
            // The rest of the stage as `publish` would run it, from the hub.
            held.release(host);
            if !control.dispatch_stopped {
                dispatch(host, (TopicIndex(E::SLOT), stage), data, control, id);
            }
            break;
        }
        if control.dispatch_stopped {
            break;
        }
    }
    !control.event_stopped
}

/// Enters `stage`: whether it runs (it was not prevented).
fn enter(control: &mut Control, stage: Stage) -> bool {
    control.stage = stage;
    control.dispatch_stopped = false;
    !control.prevented[stage.index()]
}

/// Runs the handlers of `stage`; whether the event goes on.
fn handlers<E: TopicImpl>(
    host: &mut E::Host,
    stage: Stage,
    data: &E,
    control: &mut Control,
) -> bool {
    if !enter(control, stage) {
        return false;
    }
    let slots = TopicIndex(E::SLOT);
    if host.hub().has_handlers(slots, stage) {
        dispatch(host, (slots, stage), data, control, 0);
    }
    !control.event_stopped
}

/// Runs the default action (and hands the event to the streams), unless a
/// once-only event already completed; whether the event goes on.
fn complete<E: TopicImpl>(
    host: &mut E::Host,
    data: &E,
    control: &mut Control,
    stored_here: &mut bool,
) -> bool {
    if !enter(control, Stage::Complete) {
        return false;
    }
    if E::ONCE == Once::Complete {
        if host.hub().happened(TypeId::of::<E>()) {
            return false;
        }
        host.hub().store(data);
        *stored_here = true;
    }
    host.stream().publish(|| data.clone().into_stream());
    E::complete(host, data);
    true
}

/// Runs the handlers of `E` at `stage` subscribed after `after`, in
/// subscription order.
fn dispatch<E: Topic>(
    host: &mut E::Host,
    key: (TopicIndex, Stage),
    data: &E,
    control: &mut Control,
    mut after: u64,
) where
    E::Host: HostImpl,
{
    let (slots, stage) = key;
    while let Some((id, once, handler)) = host.hub().take_next(slots, stage, after) {
        after = id;
        let Ok(mut handler) = handler.downcast::<Handler<E>>() else {
            continue;
        };
        let outcome = call(host, data, control, &mut handler);
        let more = if once {
            host.hub().discard(handler);
            true
        } else if control.unsubscribed {
            host.hub().unsubscribed(key, id, handler);
            true
        } else {
            host.hub().put_back(key, id, handler)
        };
        report::<E>(host, stage, outcome);
        if control.dispatch_stopped || !more {
            break;
        }
    }
}

/// Calls `handler` with `data`, catching its panic (see the module docs).
fn call<E: Topic>(
    host: &mut E::Host,
    data: &E,
    control: &mut Control,
    handler: &mut Handler<E>,
) -> Result<(), String> {
    control.unsubscribed = false;
    catch(|| {
        handler(&mut Event {
            data,
            host: &mut *host,
            control: &mut *control,
        });
    })
}

/// Subscribes `handler` to `key`'s event and stage. For a once-only event that
/// has already happened, the handler is called at once instead (unless that
/// event was prevented) and no subscription is made; returns whether one was.
pub(crate) fn subscribe<E: Topic>(
    host: &mut E::Host,
    key: SubscriptionKey,
    once: bool,
    mut handler: Handler<E>,
) -> bool
where
    E::Host: HostImpl,
{
    if let Some(late) = host.hub().late::<E>() {
        if let Some(data) = late {
            let mut control = Control {
                stage: Stage::After,
                ..Control::default()
            };
            let outcome = catch(|| {
                handler(&mut Event {
                    data: &data,
                    host: &mut *host,
                    control: &mut control,
                });
            });
            report::<E>(host, Stage::After, outcome);
        }
        return false;
    }
    host.hub().insert(key, once, handler);
    true
}

/// Typed routing: hands `message` to the route registered for its `type`, if
/// any. The route runs in the default action of `event`.
pub(crate) fn route<E: Topic>(
    host: &mut E::Host,
    event: &E,
    message: &Message,
) -> Result<(), MessageError>
where
    E::Host: HostImpl,
{
    let Some(name) = message.type_name() else {
        return Ok(());
    };
    let Some((id, handler)) = host.hub().take_route(name) else {
        return Ok(());
    };
    let Ok(mut handler) = handler.downcast::<RouteFn<E>>() else {
        return Ok(());
    };
    let mut control = Control {
        stage: Stage::Complete,
        ..Control::default()
    };
    let outcome = catch(|| {
        handler(
            &mut Event {
                data: event,
                host: &mut *host,
                control: &mut control,
            },
            message,
        )
    });
    host.hub().put_back_route(name, id, handler);
    outcome.unwrap_or_else(|message| {
        report::<E>(host, Stage::Complete, Err(message));
        Ok(())
    })
}

/// Tells the host of a handler of `E` that panicked in `stage`.
fn report<E: Topic>(host: &mut E::Host, stage: Stage, outcome: Result<(), String>)
where
    E::Host: HostImpl,
{
    if let Err(message) = outcome {
        host.handler_panicked(HandlerPanic {
            event: E::NAME,
            stage,
            message,
        });
    }
}

#[cfg(test)]
#[allow(unreachable_pub)]
mod tests {
    //! The dispatch rules of the original's events (stages, `prevent`,
    //! `stop_event`, `stop_dispatch`, `unsubscribe`, once-only events; see
    //! `docs/seed-mapping.md`), on a host with no processes.
    use super::*;
    use crate::events::{Hub, StreamSource};
    use crate::topics::topics;

    #[derive(Default)]
    pub struct Host {
        hub: Hub,
        log: Vec<String>,
        stream: StreamSource<TestEvent>,
        /// Runs in `Seq`'s default action, with the event's number.
        hook: Option<Hook>,
    }

    type Hook = Box<dyn FnMut(&mut Host, usize) + Send>;

    impl HostImpl for Host {
        type Stream = TestEvent;
        type Inbound = Ping;
        fn hub(&mut self) -> &mut Hub {
            &mut self.hub
        }
        fn stream(&self) -> &StreamSource<TestEvent> {
            &self.stream
        }
        fn handler_panicked(&mut self, panic: HandlerPanic) {
            let HandlerPanic {
                event,
                stage,
                message,
            } = panic;
            self.log
                .push(format!("panicked: {event} {stage:?}: {message}"));
        }
    }

    impl Host {
        fn new() -> Self {
            Self::default()
        }
        fn complete_ping(&mut self, _: &Ping) {
            self.log.push("complete ping".into());
        }
        fn complete_outer(&mut self, _: &Outer) {
            self.log.push("complete outer".into());
            publish(self, Ping);
        }
        fn complete_done(&mut self, _: &Done) {
            self.log.push("complete done".into());
        }
        fn complete_seq(&mut self, seq: &Seq) {
            self.log.push(format!("complete {}", seq.0));
            if let Some(mut hook) = self.hook.take() {
                hook(self, seq.0);
                self.hook.get_or_insert(hook);
            }
        }
        fn complete_stop(&mut self, _: &Stop) {
            self.log.push("complete stop".into());
        }
    }

    #[derive(Debug, Clone)]
    pub struct Ping;
    #[derive(Debug, Clone)]
    pub struct Outer;
    #[derive(Debug, Clone)]
    pub struct Done;
    #[derive(Debug, Clone)]
    pub struct Stop;

    topics!(Host => #[allow(dead_code)] TestEvent {
        Ping: "ping" => complete_ping;
        Outer: "outer" => complete_outer;
        Done: "done" once Publish => complete_done;
        Stop: "stop" once Complete => complete_stop;
        Seq: "seq" => complete_seq;
    });

    /// The `n`th of a run of events.
    #[derive(Debug, Clone)]
    pub struct Seq(usize);

    impl crate::events::sealed::StreamEvent for TestEvent {}

    fn sub<E: Topic<Host = Host>>(
        host: &mut Host,
        stage: Stage,
        label: &'static str,
        mut then: impl FnMut(&mut Event<'_, E>) + Send + 'static,
    ) -> SubscriptionKey {
        let key = SubscriptionKey::new::<E>(stage);
        subscribe(
            host,
            key.clone(),
            false,
            Box::new(move |event: &mut Event<'_, E>| {
                event.host.log.push(label.into());
                then(event);
            }),
        );
        key
    }

    fn nothing<E: Topic>(_: &mut Event<'_, E>) {}

    #[test]
    fn stages_run_in_order_whatever_the_subscription_order() {
        let mut host = Host::new();
        sub::<Ping>(&mut host, Stage::After, "after", nothing);
        sub::<Ping>(&mut host, Stage::On, "on", nothing);
        sub::<Ping>(&mut host, Stage::Before, "before", nothing);
        publish(&mut host, Ping);
        assert_eq!(host.log, ["before", "on", "complete ping", "after"]);
    }

    #[test]
    fn prevent_in_before_still_runs_on_but_skips_complete_and_after() {
        let mut host = Host::new();
        sub::<Ping>(&mut host, Stage::Before, "before 1", |e| e.prevent());
        sub::<Ping>(&mut host, Stage::Before, "before 2", nothing);
        sub::<Ping>(&mut host, Stage::On, "on", nothing);
        sub::<Ping>(&mut host, Stage::After, "after", nothing);
        publish(&mut host, Ping);
        assert_eq!(host.log, ["before 1", "before 2", "on"]);
    }

    #[test]
    fn prevent_stage_on_skips_on_and_everything_after() {
        let mut host = Host::new();
        sub::<Ping>(&mut host, Stage::Before, "before", |e| {
            e.prevent_stage(Stage::On)
        });
        sub::<Ping>(&mut host, Stage::On, "on", nothing);
        publish(&mut host, Ping);
        assert_eq!(host.log, ["before"]);
    }

    #[test]
    fn prevent_stage_after_keeps_the_default_action() {
        let mut host = Host::new();
        sub::<Ping>(&mut host, Stage::On, "on", |e| {
            e.prevent_stage(Stage::After)
        });
        sub::<Ping>(&mut host, Stage::After, "after", nothing);
        publish(&mut host, Ping);
        assert_eq!(host.log, ["on", "complete ping"]);
    }

    #[test]
    fn prevent_in_after_has_no_effect() {
        let mut host = Host::new();
        sub::<Ping>(&mut host, Stage::After, "after 1", |e| e.prevent());
        sub::<Ping>(&mut host, Stage::After, "after 2", nothing);
        publish(&mut host, Ping);
        assert_eq!(host.log, ["complete ping", "after 1", "after 2"]);
    }

    #[test]
    fn stop_event_finishes_the_stage_then_ends() {
        let mut host = Host::new();
        sub::<Ping>(&mut host, Stage::On, "on 1", |e| e.stop_event());
        sub::<Ping>(&mut host, Stage::On, "on 2", nothing);
        sub::<Ping>(&mut host, Stage::After, "after", nothing);
        publish(&mut host, Ping);
        assert_eq!(host.log, ["on 1", "on 2"]);
    }

    #[test]
    fn stop_dispatch_skips_only_the_rest_of_the_stage() {
        let mut host = Host::new();
        sub::<Ping>(&mut host, Stage::On, "on 1", |e| e.stop_dispatch());
        sub::<Ping>(&mut host, Stage::On, "on 2", nothing);
        sub::<Ping>(&mut host, Stage::After, "after", nothing);
        publish(&mut host, Ping);
        assert_eq!(host.log, ["on 1", "complete ping", "after"]);
    }

    #[test]
    fn nested_publishes_run_depth_first() {
        let mut host = Host::new();
        sub::<Outer>(&mut host, Stage::On, "on outer", nothing);
        sub::<Outer>(&mut host, Stage::After, "after outer", nothing);
        sub::<Ping>(&mut host, Stage::On, "on ping", nothing);
        sub::<Ping>(&mut host, Stage::After, "after ping", nothing);
        publish(&mut host, Outer);
        assert_eq!(
            host.log,
            [
                "on outer",
                "complete outer",
                "on ping",
                "complete ping",
                "after ping",
                "after outer"
            ]
        );
    }

    /// The last handler of a stage that subscribes another (itself kept,
    /// once-only or unsubscribed) has it run in the same dispatch; one that
    /// removes the next has it skipped.
    #[test]
    fn handlers_subscribed_or_removed_by_the_last_one_are_seen_at_once() {
        for (how, ran) in [
            ("kept", true),
            ("unsubscribed", true),
            ("removes next", false),
        ] {
            let mut host = Host::new();
            let next = std::sync::Arc::new(std::sync::Mutex::new(None));
            let taken = next.clone();
            sub::<Ping>(&mut host, Stage::On, "first", move |e| {
                if how == "unsubscribed" {
                    e.unsubscribe();
                }
                if how == "removes next" {
                    let key = taken.lock().expect("key").take().expect("subscribed");
                    e.host.hub.remove(key);
                } else if e.host.log.len() == 1 {
                    sub::<Ping>(e.host, Stage::On, "late", nothing);
                }
            });
            if how == "removes next" {
                let key = sub::<Ping>(&mut host, Stage::On, "next", nothing);
                *next.lock().expect("key") = Some(key);
            }
            publish(&mut host, Ping);
            let expected: &[&str] = if ran {
                &["first", "late", "complete ping"]
            } else {
                &["first", "complete ping"]
            };
            assert_eq!(host.log, expected, "{how}");
        }
    }

    #[test]
    fn once_and_unsubscribe() {
        let mut host = Host::new();
        let key = SubscriptionKey::new::<Ping>(Stage::On);
        subscribe::<Ping>(
            &mut host,
            key,
            true,
            Box::new(|e| e.host.log.push("once".into())),
        );
        sub::<Ping>(&mut host, Stage::On, "self-removing", |e| e.unsubscribe());
        let removed = sub::<Ping>(&mut host, Stage::On, "removed", nothing);
        host.hub.remove(removed);
        publish(&mut host, Ping);
        publish(&mut host, Ping);
        assert_eq!(
            host.log,
            ["once", "self-removing", "complete ping", "complete ping"]
        );
        assert_eq!(host.hub.subscriptions(), 0, "no slot is left behind");
    }

    #[test]
    fn a_subscription_added_during_its_stage_runs_in_the_same_dispatch() {
        let mut host = Host::new();
        let mut added = false;
        sub::<Ping>(&mut host, Stage::On, "first", move |e| {
            if !std::mem::replace(&mut added, true) {
                sub::<Ping>(e.host, Stage::On, "added", nothing);
            }
        });
        publish(&mut host, Ping);
        assert_eq!(host.log, ["first", "added", "complete ping"]);
    }

    #[test]
    fn publish_once_events_happen_once_and_call_late_subscribers() {
        let mut host = Host::new();
        sub::<Done>(&mut host, Stage::On, "on", nothing);
        publish(&mut host, Done);
        publish(&mut host, Done);
        let late = SubscriptionKey::new::<Done>(Stage::After);
        let subscribed = subscribe::<Done>(
            &mut host,
            late,
            false,
            Box::new(|e| e.host.log.push("late".into())),
        );
        assert_eq!(host.log, ["on", "complete done", "late"]);
        assert!(!subscribed, "no subscription is made for a late subscriber");
        assert_eq!(host.hub.subscriptions(), 1, "only `on`");
    }

    #[test]
    fn a_prevented_publish_once_event_is_final_and_blocks_late_subscribers() {
        let mut host = Host::new();
        sub::<Done>(&mut host, Stage::Before, "before", |e| e.prevent());
        publish(&mut host, Done);
        publish(&mut host, Done);
        sub::<Done>(&mut host, Stage::After, "late", nothing);
        assert_eq!(host.log, ["before"]);
    }

    #[test]
    fn complete_once_counts_only_publishes_that_reach_the_default_action() {
        let mut host = Host::new();
        let mut first = true;
        sub::<Stop>(&mut host, Stage::Before, "before", move |e| {
            if std::mem::take(&mut first) {
                e.prevent();
            }
        });
        publish(&mut host, Stop);
        publish(&mut host, Stop);
        publish(&mut host, Stop);
        assert_eq!(host.log, ["before", "before", "complete stop"]);
    }

    #[test]
    fn a_handler_that_panics_is_reported_and_the_event_goes_on() {
        let mut host = Host::new();
        sub::<Ping>(&mut host, Stage::Before, "before", |e| {
            e.stop_dispatch();
            panic!("bug in before")
        });
        sub::<Ping>(&mut host, Stage::Before, "skipped", nothing);
        sub::<Ping>(&mut host, Stage::On, "on", |_| panic!("bug in on"));
        sub::<Ping>(&mut host, Stage::After, "after", nothing);
        publish(&mut host, Ping);
        let once = [
            "before",
            "panicked: ping Before: bug in before",
            "on",
            "panicked: ping On: bug in on",
            "complete ping",
            "after",
        ];
        assert_eq!(host.log, once, "what ran before the panic still counts");
        host.log.clear();
        publish(&mut host, Ping);
        assert_eq!(host.log, once, "the handlers stay subscribed");
    }

    #[test]
    fn a_late_subscriber_or_a_route_that_panics_is_reported() {
        let mut host = Host::new();
        publish(&mut host, Done);
        sub::<Done>(&mut host, Stage::After, "late", |_| panic!("late bug"));
        host.hub.insert_route::<Ping>(
            SubscriptionKey::route("boom"),
            Box::new(
                |_: &mut Event<'_, Ping>, _: &Message| -> Result<(), MessageError> {
                    panic!("route bug")
                },
            ),
        );
        publish(&mut host, Ping);
        let boom = Message::encode(&serde_json::json!({"type": "boom"})).expect("encodes");
        assert!(route(&mut host, &Ping, &boom).is_ok(), "as if it returned");
        assert_eq!(
            host.log,
            [
                "complete done",
                "late",
                "panicked: done After: late bug",
                "complete ping",
                "panicked: ping Complete: route bug",
            ]
        );
    }

    #[test]
    fn the_stream_sees_events_that_reach_their_default_action() {
        use futures_util::FutureExt as _;
        let mut host = Host::new();
        let mut stream = host.stream().subscribe();
        sub::<Ping>(&mut host, Stage::Before, "before", |e| e.prevent());
        publish(&mut host, Ping);
        publish(&mut host, Outer);
        host.stream().close();
        let mut names = Vec::new();
        while let Some(Some(event)) = stream.next().now_or_never() {
            names.push(event.name());
        }
        assert_eq!(names, ["outer"]);
        assert!(
            stream
                .next()
                .now_or_never()
                .is_some_and(|end| end.is_none()),
            "closed streams end"
        );
    }

    /// Subscribes handlers for a scenario.
    type Setup = fn(&mut Host);

    /// What handlers of `Seq` do to the events and to the subscriptions, for
    /// `publish_each_runs_each_event_as_publish_would`.
    fn scenarios() -> Vec<(&'static str, Setup)> {
        use Stage::{After, Before, On};
        vec![
            ("plain", |h| {
                sub::<Seq>(h, Before, "before", nothing);
                sub::<Seq>(h, On, "on 1", nothing);
                sub::<Seq>(h, On, "on 2", nothing);
                sub::<Seq>(h, After, "after", nothing);
            }),
            ("subscribes to its own stage", |h| {
                sub::<Seq>(h, On, "on", |e| {
                    if e.0 == 1 {
                        sub::<Seq>(e.host, On, "added", nothing);
                    }
                });
            }),
            ("subscribes to a later stage", |h| {
                sub::<Seq>(h, On, "on", |e| {
                    if e.0 == 1 {
                        sub::<Seq>(e.host, After, "added after", nothing);
                    }
                });
            }),
            ("removes the next handler", |h| {
                let next = std::sync::Arc::new(std::sync::Mutex::new(None));
                let taken = next.clone();
                sub::<Seq>(h, On, "first", move |e| {
                    if e.0 == 1
                        && let Some(key) = taken.lock().expect("key").take()
                    {
                        e.host.hub.remove(key);
                    }
                });
                let key = sub::<Seq>(h, On, "next", nothing);
                sub::<Seq>(h, After, "after", nothing);
                *next.lock().expect("key") = Some(key);
            }),
            ("unsubscribes itself", |h| {
                sub::<Seq>(h, On, "on 1", |e| {
                    if e.0 == 1 {
                        e.unsubscribe();
                    }
                });
                sub::<Seq>(h, On, "on 2", nothing);
            }),
            ("a once-only handler", |h| {
                let once = Box::new(|e: &mut Event<'_, Seq>| e.host.log.push("once".into()));
                subscribe::<Seq>(h, SubscriptionKey::new::<Seq>(On), true, once);
                sub::<Seq>(h, On, "on", nothing);
            }),
            ("prevents and stops", |h| {
                sub::<Seq>(h, Before, "before", |e| match e.0 {
                    0 => e.prevent(),
                    1 => e.stop_event(),
                    2 => e.stop_dispatch(),
                    _ => e.prevent_stage(After),
                });
                sub::<Seq>(h, Before, "before 2", nothing);
                sub::<Seq>(h, On, "on", nothing);
                sub::<Seq>(h, After, "after", nothing);
            }),
            ("the default action subscribes", |h| {
                sub::<Seq>(h, On, "on", nothing);
                h.hook = Some(Box::new(|h, n| {
                    if n == 1 {
                        sub::<Seq>(h, After, "added after", nothing);
                    }
                }));
            }),
            ("the default action removes", |h| {
                sub::<Seq>(h, On, "on", nothing);
                let mut after = Some(sub::<Seq>(h, After, "after", nothing));
                h.hook = Some(Box::new(move |h, n| {
                    if let Some(key) = after.take_if(|_| n == 1) {
                        h.hub.remove(key);
                    }
                }));
            }),
            ("panics", |h| {
                sub::<Seq>(h, On, "on", |e| {
                    if e.0 == 1 {
                        panic!("bug at {}", e.0)
                    }
                });
                sub::<Seq>(h, After, "after", nothing);
            }),
        ]
    }

    /// `publish_each` runs each event as `publish` would, whatever its
    /// handlers do to the subscriptions during the run, and leaves the
    /// handlers subscribed as `publish` would.
    #[test]
    fn publish_each_runs_each_event_as_publish_would() {
        for (name, setup) in scenarios() {
            let mut one = Host::new();
            setup(&mut one);
            for n in 0..4 {
                publish(&mut one, Seq(n));
            }
            let mut each = Host::new();
            setup(&mut each);
            let mut n = 0;
            publish_each(&mut each, |_| {
                n += 1;
                (n <= 4).then(|| Seq(n - 1))
            });
            assert_eq!(each.log, one.log, "{name}");
            publish(&mut one, Seq(9));
            publish(&mut each, Seq(9));
            assert_eq!(each.log, one.log, "{name}: the handlers are back");
            assert_eq!(each.hub.subscriptions(), one.hub.subscriptions(), "{name}");
        }
    }

    /// A panic out of a run (here from what makes its events) puts the
    /// handlers held back.
    #[test]
    fn publish_each_puts_the_handlers_back_when_a_panic_leaves_it() {
        let mut host = Host::new();
        sub::<Seq>(&mut host, Stage::On, "on", nothing);
        let mut n = 0;
        let run = std::panic::catch_unwind(AssertUnwindSafe(|| {
            publish_each(&mut host, |_: &mut Host| {
                n += 1;
                assert!(n < 3, "no event {n}");
                Some(Seq(n - 1))
            });
        }));
        assert!(run.is_err(), "the panic goes on");
        publish(&mut host, Seq(9));
        assert_eq!(
            host.log,
            ["on", "complete 0", "on", "complete 1", "on", "complete 9"]
        );
    }

    /// Changes made between the events of a run (by what makes them) hold
    /// for the next event, handlers held or not.
    #[test]
    fn publish_each_sees_changes_made_between_events() {
        let mut host = Host::new();
        let on = sub::<Seq>(&mut host, Stage::On, "on", nothing);
        let mut on = Some(on);
        let mut n = 0;
        publish_each(&mut host, |host: &mut Host| {
            n += 1;
            if n == 3 {
                host.hub.remove(on.take().expect("once"));
                sub::<Seq>(host, Stage::After, "after", nothing);
            }
            (n <= 3).then(|| Seq(n - 1))
        });
        let expected = [
            "on",
            "complete 0",
            "on",
            "complete 1",
            "complete 2",
            "after",
        ];
        assert_eq!(host.log, expected);
    }
}
