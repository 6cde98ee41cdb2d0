//! The kernel command line (QEMU `-append`): whitespace-separated
//! `key=value` pairs and bare flags. [`Cmdline`] is the generic store later
//! subsystems read (`p9.allow=`, `meta=`, `data=`, ...); [`Config`] is the
//! part the kernel itself needs (node name, network, log level), checked
//! once at boot. A bad value is reported and the default used: the
//! appliance still boots to its shell so an operator can see why.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

/// Longest node name accepted.
pub const NODE_NAME_MAX: usize = 32;
/// Most pairs kept from one command line.
pub const PAIRS_MAX: usize = 64;

/// The parsed command line. Later keys override earlier ones.
#[derive(Clone, Debug, Default)]
pub struct Cmdline {
    raw: String,
    pairs: Vec<(String, String)>,
    flags: Vec<String>,
}

impl Cmdline {
    pub fn parse(raw: &str) -> Self {
        let mut c = Cmdline {
            raw: raw.trim().to_string(),
            ..Default::default()
        };
        for word in raw.split_ascii_whitespace() {
            match word.split_once('=') {
                Some((k, v)) if !k.is_empty() => {
                    if let Some(slot) = c.pairs.iter_mut().find(|(key, _)| key == k) {
                        slot.1 = v.to_string();
                    } else if c.pairs.len() < PAIRS_MAX {
                        c.pairs.push((k.to_string(), v.to_string()));
                    }
                }
                _ => {
                    if c.flags.len() < PAIRS_MAX {
                        c.flags.push(word.to_string());
                    }
                }
            }
        }
        c
    }

    /// The value of `key=value`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Whether a bare word (no `=`) was given.
    pub fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    /// All pairs whose key starts with `prefix` (e.g. `"p9."`).
    pub fn with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> {
        self.pairs
            .iter()
            .filter(move |(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn raw(&self) -> &str {
        &self.raw
    }
}

/// An IPv4 address as four octets.
pub type Ipv4 = [u8; 4];

pub use scoutvm_fs::format::super_block::parse_ipv4;

/// Netmask to prefix length; `None` if the mask is not contiguous.
pub fn mask_to_prefix(mask: Ipv4) -> Option<u8> {
    let m = u32::from_be_bytes(mask);
    let prefix = m.leading_ones();
    if m.checked_shl(prefix).unwrap_or(0) != 0 {
        return None;
    }
    Some(prefix as u8)
}

/// How the node gets its address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetConfig {
    Dhcp,
    Static {
        addr: Ipv4,
        prefix: u8,
        gateway: Option<Ipv4>,
    },
    /// `ip=off`: leave the interface unconfigured.
    Off,
}

/// Log verbosity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

/// What the kernel reads from the command line for itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub node: String,
    pub net: NetConfig,
    pub log: LogLevel,
    /// `debug.panic=boot`: panic right after boot (tests of the panic path).
    pub panic_at_boot: bool,
}

/// A rejected command-line value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn parse_ip_spec(c: &Cmdline, ip: &str, errors: &mut Vec<ConfigError>) -> NetConfig {
    match ip {
        "dhcp" => return NetConfig::Dhcp,
        "off" | "none" => return NetConfig::Off,
        _ => {}
    }
    let (addr_s, prefix_s) = match ip.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (ip, None),
    };
    let Some(addr) = parse_ipv4(addr_s) else {
        errors.push(ConfigError(format!(
            "ip={ip}: not an IPv4 address; using DHCP"
        )));
        return NetConfig::Dhcp;
    };
    let prefix = match (prefix_s, c.get("netmask")) {
        (Some(p), _) => match p.parse::<u8>() {
            Ok(p) if p <= 32 => p,
            _ => {
                errors.push(ConfigError(format!(
                    "ip={ip}: bad prefix length; using DHCP"
                )));
                return NetConfig::Dhcp;
            }
        },
        (None, Some(m)) => match parse_ipv4(m).and_then(mask_to_prefix) {
            Some(p) => p,
            None => {
                errors.push(ConfigError(format!(
                    "netmask={m}: not a netmask; using DHCP"
                )));
                return NetConfig::Dhcp;
            }
        },
        (None, None) => 24,
    };
    let gateway = match c.get("gateway") {
        None => None,
        Some(g) => match parse_ipv4(g) {
            Some(g) => Some(g),
            None => {
                errors.push(ConfigError(format!(
                    "gateway={g}: not an IPv4 address; ignored"
                )));
                None
            }
        },
    };
    NetConfig::Static {
        addr,
        prefix,
        gateway,
    }
}

impl Config {
    /// Read the kernel's own settings; invalid values yield the default
    /// and an error each.
    pub fn from_cmdline(c: &Cmdline) -> (Config, Vec<ConfigError>) {
        let mut errors = Vec::new();
        let node = match c.get("node") {
            None => "scoutvm".to_string(),
            Some(n)
                if !n.is_empty()
                    && n.len() <= NODE_NAME_MAX
                    && n.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
            {
                n.to_string()
            }
            Some(n) => {
                errors.push(ConfigError(format!(
                    "node={n}: use 1..{NODE_NAME_MAX} of [A-Za-z0-9_-]; using 'scoutvm'"
                )));
                "scoutvm".to_string()
            }
        };
        let net = match c.get("ip") {
            None => NetConfig::Dhcp,
            Some(ip) => parse_ip_spec(c, ip, &mut errors),
        };
        let log = match c.get("log") {
            None | Some("info") => LogLevel::Info,
            Some("error") => LogLevel::Error,
            Some("warn") => LogLevel::Warn,
            Some("debug") => LogLevel::Debug,
            Some("trace") => LogLevel::Trace,
            Some(other) => {
                errors.push(ConfigError(format!(
                    "log={other}: use error|warn|info|debug|trace"
                )));
                LogLevel::Info
            }
        };
        let panic_at_boot = c.get("debug.panic") == Some("boot");
        (
            Config {
                node,
                net,
                log,
                panic_at_boot,
            },
            errors,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_flags_and_overrides() {
        let c = Cmdline::parse("  node=a p9.allow=10.0.2.2 quiet node=b p9.msize=65536 =x ");
        assert_eq!(c.get("node"), Some("b"));
        assert_eq!(c.get("missing"), None);
        assert!(c.has_flag("quiet"));
        assert!(c.has_flag("=x"));
        let p9: Vec<_> = c.with_prefix("p9.").collect();
        assert_eq!(p9, vec![("p9.allow", "10.0.2.2"), ("p9.msize", "65536")]);
    }

    #[test]
    fn ipv4_and_masks() {
        assert_eq!(parse_ipv4("10.0.2.15"), Some([10, 0, 2, 15]));
        for bad in [
            "10.0.2",
            "10.0.2.256",
            "1.2.3.4.5",
            "a.b.c.d",
            "1..2.3",
            "0001.2.3.4",
        ] {
            assert_eq!(parse_ipv4(bad), None, "{bad}");
        }
        assert_eq!(mask_to_prefix([255, 255, 255, 0]), Some(24));
        assert_eq!(mask_to_prefix([0, 0, 0, 0]), Some(0));
        assert_eq!(mask_to_prefix([255, 255, 255, 255]), Some(32));
        assert_eq!(mask_to_prefix([255, 0, 255, 0]), None);
    }

    #[test]
    fn config_static_dhcp_and_errors() {
        let (cfg, errs) = Config::from_cmdline(&Cmdline::parse(
            "node=n1 ip=10.0.3.1 netmask=255.255.0.0 gateway=10.0.0.1 log=debug",
        ));
        assert!(errs.is_empty());
        assert_eq!(cfg.node, "n1");
        assert_eq!(
            cfg.net,
            NetConfig::Static {
                addr: [10, 0, 3, 1],
                prefix: 16,
                gateway: Some([10, 0, 0, 1])
            }
        );
        assert_eq!(cfg.log, LogLevel::Debug);

        let (cfg, errs) = Config::from_cmdline(&Cmdline::parse(""));
        assert!(errs.is_empty());
        assert_eq!(cfg.node, "scoutvm");
        assert_eq!(cfg.net, NetConfig::Dhcp);
        assert!(!cfg.panic_at_boot);

        let (cfg, errs) = Config::from_cmdline(&Cmdline::parse(
            "node=bad/name ip=10.0.0.1/40 log=loud debug.panic=boot",
        ));
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert_eq!(cfg.node, "scoutvm");
        assert_eq!(cfg.net, NetConfig::Dhcp);
        assert!(cfg.panic_at_boot);

        let (cfg, _) = Config::from_cmdline(&Cmdline::parse("ip=192.168.7.9/28"));
        assert_eq!(
            cfg.net,
            NetConfig::Static {
                addr: [192, 168, 7, 9],
                prefix: 28,
                gateway: None
            }
        );
        let (cfg, _) = Config::from_cmdline(&Cmdline::parse("ip=off"));
        assert_eq!(cfg.net, NetConfig::Off);
    }
}
