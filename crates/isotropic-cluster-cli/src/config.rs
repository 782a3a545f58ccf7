//! `run --config FILE`: the settings in a TOML file, and several pools in
//! one primary (`[pools.NAME]`). Every option of `run` is a key, with the
//! same name (kebab-case) and the same values (`args/values.rs`); `json`,
//! `timestamps`, `subreaper`, `control`, `no-control-socket` and `metrics`
//! are the whole primary's, every other key a
//! pool's, and at the top of a file with pools it is the default of every
//! pool. See `docs/config.md`.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::num::NonZeroU16;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context as _, bail};
use serde::de::{self, Deserializer, Visitor};
use toml::Spanned;

use crate::args::values::{Address, Size, Span};
use crate::args::{
    Channel, OnMaxRestarts, PlanError, Readiness, RestartMode, RunArgs, Setup, Wide,
};

/// The options of the whole primary, not of a pool: at the top of a file
/// only, and allowed on the command line whatever the number of pools.
const PRIMARY_WIDE: [&str; 7] = [
    "config",
    "json",
    "timestamps",
    "subreaper",
    "control",
    "no_control_socket",
    "metrics",
];

/// The keys of a file, at its top or in a `[pools.NAME]` table: each option
/// of `run`, all optional.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Keys {
    workers: Option<NonZeroU16>,
    #[serde(default, deserialize_with = "as_on_the_command_line")]
    grace: Option<Span>,
    #[serde(default, deserialize_with = "as_on_the_command_line")]
    stable_after: Option<Span>,
    #[serde(default, deserialize_with = "as_on_the_command_line")]
    restart_delay: Option<Span>,
    #[serde(default, deserialize_with = "as_on_the_command_line")]
    max_restart_delay: Option<Span>,
    max_restarts: Option<u32>,
    #[serde(default, deserialize_with = "as_on_the_command_line")]
    restart_period: Option<Span>,
    on_max_restarts: Option<OnMaxRestarts>,
    restart: Option<RestartMode>,
    max_requests: Option<u64>,
    max_requests_jitter: Option<u64>,
    #[serde(default, deserialize_with = "as_on_the_command_line")]
    max_age: Option<Span>,
    surge: Option<usize>,
    max_unavailable: Option<usize>,
    #[serde(default, deserialize_with = "as_on_the_command_line")]
    min_uptime: Option<Span>,
    health_check: Option<String>,
    channel: Option<Channel>,
    ready: Option<Readiness>,
    #[serde(default, deserialize_with = "as_on_the_command_line")]
    ready_timeout: Option<Span>,
    #[serde(default, deserialize_with = "as_on_the_command_line")]
    watchdog: Option<Span>,
    listen: Option<Vec<Address>>,
    #[serde(default, deserialize_with = "as_on_the_command_line")]
    max_memory: Option<Size>,
    /// The program and its arguments.
    command: Option<Vec<String>>,
    /// Added to the workers' environment (a pool's over the top's).
    #[serde(default)]
    env: BTreeMap<String, String>,
    // The primary's: at the top only (spanned, to say where one is not).
    json: Option<Spanned<bool>>,
    timestamps: Option<Spanned<bool>>,
    subreaper: Option<Spanned<bool>>,
    control: Option<Spanned<PathBuf>>,
    no_control_socket: Option<Spanned<bool>>,
    metrics: Option<Spanned<Address>>,
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
    setup_from(&text, &path.display().to_string(), args)
}

/// [`setup`], with the file's `text`; `file` names it in errors.
fn setup_from(text: &str, file: &str, args: RunArgs) -> anyhow::Result<Setup> {
    let (top, pools) = parse(text).with_context(|| format!("in {file}"))?;
    let given = |key: &str| args.given.contains(key);
    let set = |key: &str, value: &Option<Spanned<bool>>| {
        given(key) || value.as_ref().is_some_and(|value| *value.get_ref())
    };
    // (The command line's over the file's.)
    fn given_or<T: Clone>(
        given: bool,
        value: &Option<Spanned<T>>,
        from_line: Option<T>,
    ) -> Option<T> {
        match given {
            true => from_line,
            false => value.as_ref().map(|value| value.get_ref().clone()),
        }
    }
    let wide = Wide {
        json: set("json", &top.json),
        timestamps: set("timestamps", &top.timestamps),
        subreaper: set("subreaper", &top.subreaper),
        no_control_socket: set("no_control_socket", &top.no_control_socket),
        control: given_or(given("control"), &top.control, args.control.clone()),
        metrics: given_or(given("metrics"), &top.metrics, args.metrics.clone()),
    };
    if pools.len() > 1
        && let Some(option) = args
            .given
            .iter()
            .find(|id| !PRIMARY_WIDE.contains(&id.as_str()))
    {
        let names: Vec<&str> = pools.iter().map(|(name, _)| name.as_str()).collect();
        bail!(
            "{} applies to one pool, and {file} has {} ({}): set it in the file, under [pools.NAME]",
            option_name(option),
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
            (Err(PlanError::NoCommand), _) => {
                let table = name
                    .as_ref()
                    .map_or(String::new(), |name| format!(", [pools.{name}]"));
                bail!("in {file}{table}: no command to run (command = [\"program\", \"arg\", …])");
            }
            (Err(error), Some(name)) => bail!("in {file}, [pools.{name}]: {error}"),
            (Err(error), None) => bail!("in {file}: {error}"),
        };
        plan.name = name;
        plans.push(plan);
    }
    Setup::new(plans, wide).with_context(|| format!("in {file}"))
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
            ("timestamps", keys.timestamps.as_ref().map(Spanned::span)),
            ("subreaper", keys.subreaper.as_ref().map(Spanned::span)),
            ("control", keys.control.as_ref().map(Spanned::span)),
            (
                "no-control-socket",
                keys.no_control_socket.as_ref().map(Spanned::span),
            ),
            ("metrics", keys.metrics.as_ref().map(Spanned::span)),
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
            grace: |span: Span| span.0,
            stable_after: |span: Span| span.0,
            restart_delay: |span: Span| span.0,
            max_restart_delay: |span: Span| span.0,
            max_restarts: Some,
            restart_period: |span: Span| span.0,
            on_max_restarts: same,
            restart: same,
            max_requests in recycle: Some,
            max_requests_jitter in recycle: same,
            max_age in recycle: |span: Span| Some(span.0),
            surge in rollout: same,
            max_unavailable in rollout: same,
            min_uptime in rollout: |span: Span| span.0,
            health_check in rollout: Some,
            channel: same,
            ready: Some,
            ready_timeout: |span: Span| Some(span.0),
            watchdog: |span: Span| Some(span.0),
            listen: same,
            max_memory: |size: Size| Some(size.0),
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

/// A value as the command line reads it (a duration, a size): from a
/// string, or from a number written out (`grace = 5`: seconds).
fn as_on_the_command_line<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr<Err = String>,
{
    deserializer
        .deserialize_any(AsOnTheCommandLine(PhantomData))
        .map(Some)
}

/// The visitor of [`as_on_the_command_line`].
struct AsOnTheCommandLine<T>(PhantomData<T>);

impl<T: FromStr<Err = String>> Visitor<'_> for AsOnTheCommandLine<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string (such as \"5s\" or \"200M\") or a number")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<T, E> {
        text.parse().map_err(E::custom)
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::args::{Cli, Command, Plan};
    use crate::render::Format;

    /// `isotropic-cluster run FLAGS` over the file `text`.
    fn setup(text: &str, flags: &[&str]) -> anyhow::Result<Setup> {
        let line = ["isotropic-cluster", "run", "--config", "cluster.toml"];
        match Cli::try_parse_line_from(line.iter().chain(flags))
            .expect("parses")
            .command
        {
            Command::Run(args) => setup_from(text, "cluster.toml", *args),
            other => panic!("not run: {other:?}"),
        }
    }

    /// The setup of `flags` alone (no file).
    fn flags(flags: &[&str]) -> Setup {
        let line = ["isotropic-cluster", "run"].iter().chain(flags);
        match Cli::try_parse_line_from(line).expect("parses").command {
            Command::Run(args) => args.setup().expect("a setup"),
            other => panic!("not run: {other:?}"),
        }
    }

    fn error(text: &str, flags: &[&str]) -> String {
        format!("{:#}", setup(text, flags).expect_err("refused"))
    }

    fn pool<'a>(setup: &'a Setup, name: &str) -> &'a Plan {
        let found = setup
            .pools
            .iter()
            .find(|plan| plan.name.as_deref() == Some(name));
        found.unwrap_or_else(|| panic!("no pool {name}: {setup:?}"))
    }

    /// Every option as a key.
    const EVERY_KEY: &str = r#"
        workers = 3
        grace = "500ms"
        stable-after = "2s"
        restart-delay = "50ms"
        max-restart-delay = "1m"
        max-restarts = 4
        restart-period = 30
        on-max-restarts = "slow-down"
        restart = "on-failure"
        max-requests = 1000
        max-requests-jitter = 50
        max-age = "1h"
        channel = "frames"
        ready-timeout = "2s"
        listen = ["127.0.0.1:0", "unix:/tmp/a.sock"]
        json = true
        subreaper = true
        control = "/run/c.sock"
        metrics = "127.0.0.1:9100"
        watchdog = 1.5
        max-memory = "200M"
        surge = 2
        max-unavailable = 1
        min-uptime = "5s"
        health-check = "curl -sf localhost:8080"
        env = { A = "1", B = "x=y" }
        command = ["prog", "arg"]
    "#;

    #[test]
    fn a_file_without_pools_is_the_same_as_its_flags() {
        let line = [&crate::args::tests::EVERY_FLAG[..], &["--", "prog", "arg"]].concat();
        let from_flags = flags(&line);
        assert_eq!(setup(EVERY_KEY, &[]).expect("a setup"), from_flags);
    }

    #[test]
    fn the_command_line_overrides_a_single_pool() {
        let text =
            "workers = 3\ngrace = \"1s\"\nenv = { A = \"1\", B = \"2\" }\ncommand = [\"prog\"]\n";
        let setup = setup(
            text,
            &["--workers", "5", "--env", "B=3", "--", "other", "x"],
        );
        let plan = &setup.expect("a setup").pools[0];
        assert_eq!(plan.workers, 5);
        assert_eq!(plan.grace, Duration::from_secs(1));
        assert_eq!(
            (plan.program.as_str(), plan.args.as_slice()),
            ("other", &["x".to_owned()][..])
        );
        let env = |key: &str| {
            plan.env
                .iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!((env("A"), env("B")), (Some("1"), Some("3")));
    }

    const TWO_POOLS: &str = r#"
        grace = "10s"
        json = true
        env = { SHARED = "1", NODE_ENV = "development" }

        [pools.web]
        command = ["node", "app.js"]
        workers = 4
        listen = ["127.0.0.1:8080"]
        ready = "listening"
        env = { NODE_ENV = "production" }

        [pools.jobs]
        command = ["python3", "jobs.py"]
        workers = 2
        restart = "on-failure"
        grace = "1m"
    "#;

    #[test]
    fn several_pools_each_with_the_tops_keys_as_defaults() {
        let setup = setup(TWO_POOLS, &[]).expect("a setup");
        assert_eq!(setup.format, Format::Json);
        let names: Vec<_> = setup
            .pools
            .iter()
            .map(|plan| plan.name.as_deref())
            .collect();
        assert_eq!(names, [Some("jobs"), Some("web")]);
        let (web, jobs) = (pool(&setup, "web"), pool(&setup, "jobs"));
        assert_eq!((web.program.as_str(), web.workers), ("node", 4));
        assert_eq!(web.readiness, Readiness::Listening);
        assert_eq!(web.listen, ["127.0.0.1:8080".parse().expect("an address")]);
        assert_eq!(web.grace, Duration::from_secs(10));
        let env = |plan: &Plan| {
            let mut env = BTreeMap::new();
            env.extend(plan.env.iter().cloned());
            env
        };
        assert_eq!(env(web)["NODE_ENV"], "production");
        assert_eq!(env(web)["SHARED"], "1");
        assert_eq!(env(jobs)["NODE_ENV"], "development");
        assert_eq!((jobs.program.as_str(), jobs.workers), ("python3", 2));
        assert_eq!(jobs.readiness, Readiness::Start);
        assert!(jobs.listen.is_empty());
        assert_eq!(jobs.grace, Duration::from_secs(60));
        assert_eq!(setup.grace(), Duration::from_secs(60));
    }

    #[test]
    fn the_example_is_valid() {
        let text = include_str!("../../../examples/cluster.toml");
        let setup = setup(text, &[]).expect("a setup");
        let (web, jobs) = (pool(&setup, "web"), pool(&setup, "jobs"));
        assert_eq!((web.workers, jobs.workers), (4, 2));
        assert_eq!(jobs.channel, Channel::Frames);
    }

    #[test]
    fn an_unknown_key_is_named_with_its_line() {
        let text =
            "workers = 2\ncommand = [\"prog\"]\n\n[pools.web]\ncommand = [\"a\"]\nworkrs = 3\n";
        let error = error(text, &[]);
        assert!(error.contains("unknown field `workrs`"), "{error}");
        assert!(error.contains("line 6"), "{error}");
        assert!(error.starts_with("in cluster.toml: "), "{error}");
    }

    #[test]
    fn a_bad_value_names_its_key() {
        let error = error("grace = \"5x\"\ncommand = [\"prog\"]\n", &[]);
        assert!(error.contains("not a duration: 5x"), "{error}");
        assert!(error.contains("grace = \"5x\""), "{error}");
        assert!(error.contains("line 1"), "{error}");
        let error = self::error("[pools.a]\ncommand = [\"a\"]\nchannel = \"ipc\"\n", &[]);
        assert!(error.contains("unknown variant `ipc`"), "{error}");
        assert!(error.contains("line 3"), "{error}");
        let error = self::error("workers = 0\ncommand = [\"a\"]\n", &[]);
        assert!(error.contains("workers = 0"), "{error}");
        let error = self::error("max-memory = \"lots\"\ncommand = [\"a\"]\n", &[]);
        assert!(error.contains("not a size: lots"), "{error}");
    }

    #[test]
    fn a_pools_flag_with_several_pools_is_refused() {
        let error = error(TWO_POOLS, &["--workers", "3"]);
        assert_eq!(
            error,
            "--workers applies to one pool, and cluster.toml has 2 (jobs, web): set it in the file, under [pools.NAME]"
        );
        let error = self::error(TWO_POOLS, &["--", "prog"]);
        assert!(
            error.starts_with("a command after -- applies to one pool"),
            "{error}"
        );
        // The primary's options are welcome.
        let setup = setup(TWO_POOLS, &["--subreaper"]).expect("a setup");
        assert!(setup.reap_orphans);
    }

    #[test]
    fn the_primarys_keys_belong_at_the_top() {
        let text =
            "[pools.web]\ncommand = [\"a\"]\n\n[pools.jobs]\ncommand = [\"b\"]\njson = true\n";
        assert_eq!(
            error(text, &[]),
            "in cluster.toml: line 6: `json` is the whole primary's: set it at the top of the file, not in [pools.jobs]"
        );
    }

    #[test]
    fn a_pools_plan_errors_name_it() {
        let text = "[pools.web]\ncommand = [\"a\"]\nready = \"message\"\n[pools.jobs]\n";
        let error = error(text, &[]);
        assert_eq!(
            error,
            "in cluster.toml, [pools.jobs]: no command to run (command = [\"program\", \"arg\", …])"
        );
        let text = "[pools.web]\ncommand = [\"a\"]\nready = \"message\"\n";
        assert_eq!(
            self::error(text, &[]),
            "in cluster.toml, [pools.web]: --ready message needs --channel node or frames"
        );
        let text = "command = [\"a\"]\nmax-requests-jitter = 5\n";
        assert_eq!(
            self::error(text, &[]),
            "in cluster.toml: --max-requests-jitter needs --max-requests"
        );
        let error = self::error("[pools.\"a b\"]\ncommand = [\"a\"]\n", &[]);
        assert!(error.contains("the pool name \"a b\""), "{error}");
    }
}
