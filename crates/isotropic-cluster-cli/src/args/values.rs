//! The values flags take (and a config file will): addresses, durations,
//! sizes and counts, each parsed from text with an error that says what is
//! wrong with it. Each is `FromStr` for clap and `Deserialize` from a string
//! for serde (`try_from = "String"`).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs as _};
use std::str::FromStr;
use std::time::Duration;

use isotropic_cluster::ListenAddress;
use serde::Deserialize;

/// An address to listen on, written as gunicorn's `--bind` takes it:
/// `127.0.0.1:8080`, `[::1]:8080`, `localhost:8080` (a host name: its first
/// address), `:8080` or `8080` (every IPv4 interface, `0.0.0.0`),
/// `unix:/path` (or `/path`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub(crate) struct Address(ListenAddress);

impl Address {
    /// The address to bind.
    pub(crate) fn into_inner(self) -> ListenAddress {
        self.0
    }
}

impl FromStr for Address {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text.starts_with("unix:") || text.starts_with('/') {
            return text.parse().map(Self).map_err(|e| e.to_string());
        }
        if let Ok(address) = text.parse::<SocketAddr>() {
            return Ok(Self(address.into()));
        }
        let bad = |why: &str| {
            format!(
                "{why}: {text} (e.g. 127.0.0.1:8080, [::1]:8080, localhost:8080, :8080, unix:/run/app.sock)"
            )
        };
        let (host, port) = text.rsplit_once(':').unwrap_or(("", text));
        let port: u16 = port.parse().map_err(|_| bad("not a port number"))?;
        let ip = match host {
            "" => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            // (Not left to the resolver, which may answer ::1 first.)
            host if host.eq_ignore_ascii_case("localhost") => IpAddr::V4(Ipv4Addr::LOCALHOST),
            host if host.contains(':') || host.contains('[') => {
                return Err(bad("an IPv6 address goes in brackets"));
            }
            host => (host, port)
                .to_socket_addrs()
                .ok()
                .and_then(|mut found| found.next())
                .ok_or_else(|| bad("unknown host"))?
                .ip(),
        };
        Ok(Self(SocketAddr::new(ip, port).into()))
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A duration: `500ms`, `2s`, `1.5s`, `1min` (or `1m`), `1h30m`, `2h 5min`,
/// `1d`, or a number of seconds (`30`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub(crate) struct Span(pub(crate) Duration);

impl FromStr for Span {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text.starts_with('-') {
            return Err(format!("a duration cannot be negative: {text}"));
        }
        if text.starts_with(|c: char| c.is_ascii_digit() || c == '.')
            && let Ok(seconds) = text.parse::<f64>()
        {
            return Duration::try_from_secs_f64(seconds)
                .map(Self)
                .map_err(|_| format!("not a duration: {text}"));
        }
        humantime::parse_duration(text).map(Self).map_err(|error| {
            format!("not a duration: {text} ({error}; e.g. 500ms, 2s, 1min, 1h30m)")
        })
    }
}

/// A size in bytes above zero: `200M`, `1G`, `512K` (powers of 1024, a
/// fraction allowed: `1.5G`), or a number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub(crate) struct Size(pub(crate) u64);

impl FromStr for Size {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (number, unit) = text.split_at(
            text.find(|c: char| !c.is_ascii_digit() && c != '.')
                .unwrap_or(text.len()),
        );
        let value: f64 = number.parse().map_err(|_| format!("not a size: {text}"))?;
        let unit: u64 = match unit {
            "" => 1,
            "K" | "k" => 1 << 10,
            "M" | "m" => 1 << 20,
            "G" | "g" => 1 << 30,
            _ => return Err(format!("unknown unit in {text} (K, M or G, or bytes)")),
        };
        let bytes = (value * unit as f64).floor();
        if bytes < 1.0 || bytes >= u64::MAX as f64 {
            return Err(format!("not a size above zero: {text}"));
        }
        Ok(Self(bytes as u64))
    }
}

/// A whole number of things (at least `MIN`) on the command line: a
/// negative one is an error of its own, not taken for a flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Count<const MIN: u64 = 0>(pub(crate) u64);

impl<const MIN: u64> FromStr for Count<MIN> {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text.starts_with('-') && text[1..].parse::<u64>().is_ok() {
            return Err(format!(
                "{text} is negative: give a number of {MIN} or more"
            ));
        }
        match text.parse::<u64>() {
            Ok(n) if n >= MIN => Ok(Self(n)),
            Ok(_) => Err(format!("{text} is too few: give a number of {MIN} or more")),
            Err(_) => Err(format!("not a whole number: {text}")),
        }
    }
}

/// `TryFrom<String>` through `FromStr`, for serde's `try_from`.
macro_rules! from_string {
    ($($type:ty),* $(,)?) => {$(
        impl TryFrom<String> for $type {
            type Error = String;

            fn try_from(text: String) -> Result<Self, String> {
                text.parse()
            }
        }
    )*};
}

from_string!(Address, Span, Size);

#[cfg(test)]
mod tests {
    use super::*;

    fn address(text: &str) -> Result<String, String> {
        text.parse::<Address>().map(|a| a.to_string())
    }

    #[test]
    fn addresses_as_gunicorn_takes_them() {
        assert_eq!(address("127.0.0.1:8080").as_deref(), Ok("127.0.0.1:8080"));
        assert_eq!(address("[::1]:8080").as_deref(), Ok("[::1]:8080"));
        assert_eq!(address("localhost:8080").as_deref(), Ok("127.0.0.1:8080"));
        assert_eq!(address("LOCALHOST:0").as_deref(), Ok("127.0.0.1:0"));
        assert_eq!(address(":8080").as_deref(), Ok("0.0.0.0:8080"));
        assert_eq!(address("8080").as_deref(), Ok("0.0.0.0:8080"));
        assert_eq!(
            address("unix:/run/a.sock").as_deref(),
            Ok("unix:/run/a.sock")
        );
        assert_eq!(address("/run/a.sock").as_deref(), Ok("unix:/run/a.sock"));
    }

    #[test]
    fn bad_addresses_say_what_is_wrong() {
        let error = address("localhost:http").expect_err("a named port");
        assert!(
            error.starts_with("not a port number: localhost:http (e.g."),
            "{error}"
        );
        assert!(address("127.0.0.1:99999").is_err());
        assert!(address("").is_err());
        assert!(
            address("::1:8080")
                .expect_err("no brackets")
                .starts_with("an IPv6 address goes in brackets")
        );
    }

    fn span(text: &str) -> Result<Duration, String> {
        text.parse::<Span>().map(|span| span.0)
    }

    #[test]
    fn durations() {
        assert_eq!(span("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(span("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(span("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(span("2"), Ok(Duration::from_secs(2)));
        assert_eq!(span("0.25"), Ok(Duration::from_millis(250)));
        assert_eq!(span("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(span("1min"), Ok(Duration::from_secs(60)));
        assert_eq!(span("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(span("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(span("2h 5min"), Ok(Duration::from_secs(7500)));
        assert_eq!(span("1d"), Ok(Duration::from_secs(86_400)));
    }

    #[test]
    fn bad_durations_say_what_is_wrong() {
        assert_eq!(
            span("-5s"),
            Err("a duration cannot be negative: -5s".to_owned())
        );
        for junk in ["5x", "s", "1.2.3s", "", "lots"] {
            let error = span(junk).expect_err(junk);
            assert!(
                error.starts_with(&format!("not a duration: {junk}")),
                "{error}"
            );
        }
    }

    fn size(text: &str) -> Result<u64, String> {
        text.parse::<Size>().map(|size| size.0)
    }

    #[test]
    fn sizes() {
        assert_eq!(size("200M"), Ok(200 << 20));
        assert_eq!(size("1G"), Ok(1 << 30));
        assert_eq!(size("512K"), Ok(512 << 10));
        assert_eq!(size("512k"), Ok(512 << 10));
        assert_eq!(size("1.5G"), Ok(3 << 29));
        assert_eq!(size("1048576"), Ok(1 << 20));
        assert_eq!(
            size("200MB"),
            Err("unknown unit in 200MB (K, M or G, or bytes)".to_owned())
        );
        assert_eq!(
            size("2T"),
            Err("unknown unit in 2T (K, M or G, or bytes)".to_owned())
        );
        for junk in ["", "M", "-5M", "1.2.3M", "lots"] {
            assert!(size(junk).is_err(), "{junk:?}");
        }
        assert_eq!(size("0"), Err("not a size above zero: 0".to_owned()));
        assert_eq!(size("0.1"), Err("not a size above zero: 0.1".to_owned()));
        assert!(size("99999999999G").is_err(), "past u64");
    }

    #[test]
    fn counts() {
        assert_eq!("3".parse::<Count>(), Ok(Count(3)));
        assert_eq!("0".parse::<Count>(), Ok(Count(0)));
        assert_eq!(
            "-1".parse::<Count<1>>(),
            Err("-1 is negative: give a number of 1 or more".to_owned())
        );
        assert_eq!(
            "0".parse::<Count<1>>(),
            Err("0 is too few: give a number of 1 or more".to_owned())
        );
        assert_eq!(
            "many".parse::<Count>(),
            Err("not a whole number: many".to_owned())
        );
    }

    #[test]
    fn values_deserialize_from_strings() {
        #[derive(Debug, Deserialize)]
        struct Settings {
            listen: Address,
            grace: Span,
            max_memory: Size,
        }
        let settings: Settings =
            serde_json::from_str(r#"{"listen": ":8080", "grace": "1min", "max_memory": "1G"}"#)
                .expect("settings");
        assert_eq!(settings.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(settings.grace, Span(Duration::from_secs(60)));
        assert_eq!(settings.max_memory, Size(1 << 30));
        let error = serde_json::from_str::<Settings>(
            r#"{"listen": ":8080", "grace": "soon", "max_memory": "1G"}"#,
        )
        .expect_err("a bad duration");
        assert!(
            error.to_string().starts_with("not a duration: soon"),
            "{error}"
        );
    }
}
