//! Panics of user code, caught: [`catch`] and [`catch_async`] run a handler
//! and turn its panic into its message; [`HandlerPanic`] says which event's
//! handler it was, for the host to decide what follows
//! (`HostImpl::handler_panicked`).

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures_util::FutureExt as _;

use super::event::Stage;

/// A panic caught in a handler of `event` (its original name), in `stage`
/// ([`Stage::Complete`]: a typed route, or a hook of the default action such
/// as an initializer or a worker's cleanup). Public only as the argument of
/// the sealed `HostImpl::handler_panicked`.
#[derive(Debug, Clone)]
#[allow(unreachable_pub)]
pub struct HandlerPanic {
    pub(crate) event: &'static str,
    pub(crate) stage: Stage,
    pub(crate) message: String,
}

/// Runs `f`; its panic becomes `Err` with the panic's message (the panic hook
/// has printed it already, as for any panic).
pub(crate) fn catch<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    std::panic::catch_unwind(AssertUnwindSafe(f)).map_err(|payload| message(&*payload))
}

/// As [`catch`], for a future: a panic in any of its polls.
pub(crate) async fn catch_async<F: Future>(future: F) -> Result<F::Output, String> {
    AssertUnwindSafe(future)
        .catch_unwind()
        .await
        .map_err(|payload| message(&*payload))
}

/// The text of a panic's payload (`panic!` makes a `&str` or a `String`).
fn message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|text| (*text).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic whose payload is not text".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_becomes_its_message_and_a_value_goes_through() {
        let number = 7;
        assert_eq!(catch(|| 1), Ok(1));
        assert_eq!(
            catch(|| panic!("static text")),
            Err::<(), _>("static text".into())
        );
        assert_eq!(
            catch(|| panic!("formatted {number}")),
            Err::<(), _>("formatted 7".into())
        );
        assert_eq!(
            catch(|| std::panic::panic_any(number)),
            Err::<(), _>("a panic whose payload is not text".into())
        );
        assert_eq!(catch_async(async { 2 }).await, Ok(2));
        let later = async {
            tokio::task::yield_now().await;
            panic!("after a poll")
        };
        assert_eq!(
            catch_async(later).await,
            Err::<(), _>("after a poll".into())
        );
    }
}
