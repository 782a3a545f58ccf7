//! `run --config FILE`: the settings in a TOML file, and several pools in
//! one primary (`[pools.NAME]`). Every option of `run` is a key, with the
//! same name (kebab-case) and the same values; `json` and `subreaper` are
//! the whole primary's, every other key a pool's, and at the top of a file
//! with pools it is the default of every pool. See `docs/config.md`.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::num::NonZeroU16;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::de::{self, Deserializer, Visitor};
use toml::Spanned;

use crate::args::{self, Channel, OnMaxRestarts, Readiness, RestartMode, RunArgs, Setup};

/// The options of the whole primary, not of a pool: at the top of a file
/// only, and allowed on the command line whatever the number of pools.
const PRIMARY_WIDE: [&str; 3] = ["config", "json", "subreaper"];

/// The keys of a file, at its top or in a `[pools.NAME]` table: each option
/// of `run`, all optional.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Keys {
    workers: Option<NonZeroU16>,
    #[serde(default, deserialize_with = "duration")]
    grace: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    stable_after: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    restart_delay: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    max_restart_delay: Option<Duration>,
    max_restarts: Option<u32>,
    #[serde(default, deserialize_with = "duration")]
    restart_period: Option<Duration>,
    on_max_restarts: Option<OnMaxRestarts>,
    restart: Option<RestartMode>,
    max_requests: Option<u64>,
    max_requests_jitter: Option<u64>,
    #[serde(default, deserialize_with = "duration")]
    max_age: Option<Duration>,
    surge: Option<usize>,
    max_unavailable: Option<usize>,
    #[serde(default, deserialize_with = "duration")]
    min_uptime: Option<Duration>,
    health_check: Option<String>,
    channel: Option<Channel>,
    ready: Option<Readiness>,
    #[serde(default, deserialize_with = "duration")]
    ready_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    watchdog: Option<Duration>,
    listen: Option<Vec<String>>,
    #[serde(default, deserialize_with = "size")]
    max_memory: Option<u64>,
    /// The program and its arguments.
    command: Option<Vec<String>>,
    /// Added to the workers' environment (a pool's over the top's).
    #[serde(default)]
    env: BTreeMap<String, String>,
    // The primary's: at the top only (spanned, to say where one is not).
    json: Option<Spanned<bool>>,
    subreaper: Option<Spanned<bool>>,
    pools: Option<Spanned<BTreeMap<String, Keys>>>,
}

/// `args` (the command line) over the file at `path`: the run's setup.
///
/// # Errors
///
/// The file cannot be read, is not TOML, has a key that is not an option or
/// a value that is not the key's; a pool name is not a name; an option on
/// the command line is a pool's while the file has several; a pool's
/// settings make no plan.
pub(crate) fn setup(path: &Path, args: RunArgs) -> anyhow::Result<Setup> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read --config {}", path.display()))?;
    let (top, pools) = parse(&text).with_context(|| format!("in {}", path.display()))?;
    let given = |key: &str| args.given.contains(key);
    let json = given("json") || top.json.as_ref().is_some_and(|json| *json.get_ref());
    let subreaper = given("subreaper") || top.subreaper.as_ref().is_some_and(|s| *s.get_ref());
    if pools.len() > 1
        && let Some(option) = args
            .given
            .iter()
            .find(|id| !PRIMARY_WIDE.contains(&id.as_str()))
    {
        let names: Vec<&str> = pools.iter().map(|(name, _)| name.as_str()).collect();
        bail!(
            "{} applies to one pool, and {} has {} ({}): set it in the file, under [pools.NAME]",
            option_name(option),
            path.display(),
            pools.len(),
            names.join(", ")
        );
    }
    let named = match pools.is_empty() {
        true => vec![(None, Keys::default())],
        false => pools
            .into_iter()
            .map(|(name, keys)| (Some(name), keys))
            .collect(),
    };
    let mut plans = Vec::with_capacity(named.len());
    for (name, keys) in named {
        let mut pool = args.clone();
        top.apply_to(&mut pool);
        keys.apply_to(&mut pool);
        pool.env = (top.env.iter().chain(&keys.env))
            .map(|(key, value)| (key.clone(), value.clone()))
            .chain(args.env.iter().cloned())
            .collect();
        let mut plan = match (pool.plan(), &name) {
            (Ok(plan), _) => plan,
            (Err(error), Some(name)) => bail!("in {}, [pools.{name}]: {error}", path.display()),
            (Err(error), None) => bail!("in {}: {error}", path.display()),
        };
        plan.name = name;
        plans.push(plan);
    }
    Ok(Setup::new(plans, json, subreaper))
}

/// The top of the file, and its pools by name.
fn parse(text: &str) -> anyhow::Result<(Keys, Vec<(String, Keys)>)> {
    let mut top: Keys = toml::from_str(text)?;
    let pools = top
        .pools
        .take()
        .map(Spanned::into_inner)
        .unwrap_or_default();
    for (name, keys) in &pools {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            bail!("the pool name {name:?} is not letters, digits, '-' and '_'");
        }
        let misplaced = [
            ("json", keys.json.as_ref().map(Spanned::span)),
            ("subreaper", keys.subreaper.as_ref().map(Spanned::span)),
            ("pools", keys.pools.as_ref().map(Spanned::span)),
        ];
        if let Some((key, Some(span))) = misplaced.into_iter().find(|(_, span)| span.is_some()) {
            bail!(
                "line {}: `{key}` is the whole primary's: set it at the top of the file, not in [pools.{name}]",
                line_of(text, span.start)
            );
        }
    }
    Ok((top, pools.into_iter().collect()))
}

impl Keys {
    /// Sets in `args` the options this table gives, but for those given on
    /// the command line (`args.given`).
    fn apply_to(&self, args: &mut RunArgs) {
        let given = std::mem::take(&mut args.given);
        macro_rules! set {
            ($($field:ident $(in $group:ident)?: $value:expr),* $(,)?) => {$(
                if let Some(value) = self.$field.clone()
                    && !given.contains(stringify!($field))
                {
                    args $(.$group)? .$field = ($value)(value);
                }
            )*};
        }
        set! {
            workers: |workers: NonZeroU16| Some(workers.get()),
            grace: same,
            stable_after: same,
            restart_delay: same,
            max_restart_delay: same,
            max_restarts: Some,
            restart_period: same,
            on_max_restarts: same,
            restart: same,
            max_requests in recycle: Some,
            max_requests_jitter in recycle: same,
            max_age in recycle: Some,
            surge in rollout: same,
            max_unavailable in rollout: same,
            min_uptime in rollout: same,
            health_check in rollout: Some,
            channel: same,
            ready: Some,
            ready_timeout: Some,
            watchdog: Some,
            listen: same,
            max_memory: Some,
            command: same,
        }
        args.given = given;
    }
}

fn same<T>(value: T) -> T {
    value
}

/// How the command line spells the option `id`.
fn option_name(id: &str) -> String {
    match id {
        "command" => "a command after --".to_owned(),
        id => format!("--{}", id.replace('_', "-")),
    }
}

/// The line (from 1) of the byte at `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&byte| byte == b'\n')
        .count()
        + 1
}

/// A duration as on the command line: `"500ms"`, `"5s"`, `"2m"`, `"1h"`,
/// or a number of seconds.
fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
    deserializer
        .deserialize_any(AsOnTheCommandLine(args::duration, PhantomData))
        .map(Some)
}

/// A size as on the command line: `"200M"`, `"1G"`, `"512K"`, or bytes.
fn size<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    deserializer
        .deserialize_any(AsOnTheCommandLine(args::size, PhantomData))
        .map(Some)
}

/// A value read as the command line reads it: from a string, or from a
/// number written out.
struct AsOnTheCommandLine<T>(fn(&str) -> Result<T, String>, PhantomData<T>);

impl<T> Visitor<'_> for AsOnTheCommandLine<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string (such as \"5s\" or \"200M\") or a number")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<T, E> {
        (self.0)(text).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, number: u64) -> Result<T, E> {
        self.visit_str(&number.to_string())
    }

    fn visit_i64<E: de::Error>(self, number: i64) -> Result<T, E> {
        self.visit_str(&number.to_string())
    }

    fn visit_f64<E: de::Error>(self, number: f64) -> Result<T, E> {
        self.visit_str(&number.to_string())
    }
}
