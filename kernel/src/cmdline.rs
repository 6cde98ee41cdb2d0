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
use scoutvm_fs::cluster::auth::ClusterKey;

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

/// Parse `"a.b.c.d:port"` (port 1..=65535), the cluster's address form.
pub fn parse_socket_addr(s: &str) -> Option<(Ipv4, u16)> {
    let (ip, port) = s.split_once(':')?;
    let ip = parse_ipv4(ip)?;
    if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let port = port.parse::<u16>().ok().filter(|&p| p != 0)?;
    Some((ip, port))
}

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

/// Most network cards configured (`ip=` for eth0, `ip1=`.. for the rest).
pub const NICS_MAX: usize = 4;

/// Quorum heartbeat timeout bounds and default (ms), as scoutfs's
/// `quorum_heartbeat_timeout_ms` mount option.
pub const HEARTBEAT_TIMEOUT_MS_MIN: u32 = 2_000;
pub const HEARTBEAT_TIMEOUT_MS_MAX: u32 = 60_000;
pub const HEARTBEAT_TIMEOUT_MS_DEFAULT: u32 = 10_000;

/// `orphan_scan_delay_ms=` bounds (ms), as scoutfs's mount option; the
/// default is the fs crate's.
pub const ORPHAN_SCAN_DELAY_MS_MIN: u32 =
    scoutvm_fs::posix::orphan::ORPHAN_SCAN_DELAY_MIN_MS as u32;
pub const ORPHAN_SCAN_DELAY_MS_MAX: u32 =
    scoutvm_fs::posix::orphan::ORPHAN_SCAN_DELAY_MAX_MS as u32;
pub const ORPHAN_SCAN_DELAY_MS_DEFAULT: u32 =
    scoutvm_fs::posix::orphan::ORPHAN_SCAN_DELAY_MS as u32;

/// `log_merge.finalize_height=` bounds: the server finalizes a mount's
/// log tree (and merges) once its item btree is taller than this; lower
/// means smaller, more frequent merges (tests force merges with 1).
pub const FINALIZE_HEIGHT_MIN: u8 = 1;
pub const FINALIZE_HEIGHT_MAX: u8 = 8;

/// This node's part in a cluster, from `quorum_slot_nr=`,
/// `quorum_heartbeat_timeout_ms=` and `cluster=1`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The quorum slot this node holds; `None`: a client-only node.
    pub quorum_slot_nr: Option<u8>,
    /// How long without a leader's heartbeat before an election.
    pub heartbeat_timeout_ms: u32,
    /// `cluster.key=` (64 hex digits): cluster traffic is authenticated.
    pub key: Option<ClusterKey>,
    /// `cluster.insecure=1`: a quorum of several slots may run without a key.
    pub insecure: bool,
    /// `fence.agent=IP:PORT`: the host fence agent fence requests go to
    /// (without it only the shell's `fence ack` fences).
    pub fence_agent: Option<String>,
    /// `orphan_scan_delay_ms=`: how often the mount looks for unlinked
    /// inodes no node has open any more.
    pub orphan_scan_delay_ms: u32,
    /// `log_merge.finalize_height=`: the server's finalize height (when
    /// this node leads); `None`: the server's default.
    pub finalize_height: Option<u8>,
}

/// Whether (and how) the node runs as a cluster member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterMode {
    /// No cluster words: a single node that mounts and serves on its own.
    Off,
    /// A cluster member: it must not mount the shared volume on its own.
    On(ClusterConfig),
    /// Cluster words were given but are invalid: the node must neither
    /// join nor mount (the message says why).
    Invalid(String),
}

impl ClusterMode {
    /// Whether the shared volume must be left to the cluster.
    pub fn is_cluster(&self) -> bool {
        !matches!(self, ClusterMode::Off)
    }

    /// Read the cluster words. Any of `quorum_slot_nr=`,
    /// `quorum_heartbeat_timeout_ms=` or `cluster=1` makes the node a
    /// cluster member; `cluster=0` with a slot is a contradiction.
    /// `cluster.key=` and `cluster.insecure=` only qualify a member.
    pub fn from_cmdline(c: &Cmdline) -> ClusterMode {
        let slot = c.get("quorum_slot_nr");
        let hb = c.get("quorum_heartbeat_timeout_ms");
        let key = match c.get("cluster.key") {
            None => None,
            Some(v) => match ClusterKey::parse_hex(v) {
                Ok(k) => Some(k),
                // never echo the (maybe nearly right) secret
                Err(why) => return ClusterMode::Invalid(format!("cluster.key=: {why}")),
            },
        };
        let insecure = match c.get("cluster.insecure") {
            None | Some("0") => false,
            Some("1") => true,
            Some(v) => {
                return ClusterMode::Invalid(format!("cluster.insecure={v}: expected 0 or 1"))
            }
        };
        let fence_agent = match c.get("fence.agent") {
            None => None,
            Some(v) if parse_socket_addr(v).is_some() => Some(String::from(v)),
            Some(v) => return ClusterMode::Invalid(format!("fence.agent={v}: expected IP:PORT")),
        };
        let orphan_scan_delay_ms = match c.get("orphan_scan_delay_ms") {
            None => ORPHAN_SCAN_DELAY_MS_DEFAULT,
            Some(v) => match v.parse::<u32>() {
                Ok(ms) if (ORPHAN_SCAN_DELAY_MS_MIN..=ORPHAN_SCAN_DELAY_MS_MAX).contains(&ms) => ms,
                _ => {
                    return ClusterMode::Invalid(format!(
                        "orphan_scan_delay_ms={v}: expected \
                         {ORPHAN_SCAN_DELAY_MS_MIN}..={ORPHAN_SCAN_DELAY_MS_MAX}"
                    ))
                }
            },
        };
        let finalize_height = match c.get("log_merge.finalize_height") {
            None => None,
            Some(v) => match v.parse::<u8>() {
                Ok(h) if (FINALIZE_HEIGHT_MIN..=FINALIZE_HEIGHT_MAX).contains(&h) => Some(h),
                _ => {
                    return ClusterMode::Invalid(format!(
                        "log_merge.finalize_height={v}: expected \
                         {FINALIZE_HEIGHT_MIN}..={FINALIZE_HEIGHT_MAX}"
                    ))
                }
            },
        };
        let wanted = match c.get("cluster") {
            None => slot.is_some() || hb.is_some(),
            Some("1") => true,
            Some("0") if slot.is_none() && hb.is_none() => false,
            Some("0") => {
                return ClusterMode::Invalid(
                    "cluster=0 contradicts quorum_slot_nr=/quorum_heartbeat_timeout_ms=".into(),
                )
            }
            Some(v) => return ClusterMode::Invalid(format!("cluster={v}: expected 0 or 1")),
        };
        if !wanted {
            return ClusterMode::Off;
        }
        let slots = scoutvm_fs::format::super_block::QUORUM_MAX_SLOTS;
        let quorum_slot_nr = match slot {
            None => None,
            Some(v) => match v.parse::<u8>() {
                Ok(n) if (n as usize) < slots => Some(n),
                _ => {
                    return ClusterMode::Invalid(format!(
                        "quorum_slot_nr={v}: expected 0..={}",
                        slots - 1
                    ))
                }
            },
        };
        let heartbeat_timeout_ms = match hb {
            None => HEARTBEAT_TIMEOUT_MS_DEFAULT,
            Some(v) => match v.parse::<u32>() {
                Ok(ms) if (HEARTBEAT_TIMEOUT_MS_MIN..=HEARTBEAT_TIMEOUT_MS_MAX).contains(&ms) => ms,
                _ => {
                    return ClusterMode::Invalid(format!(
                        "quorum_heartbeat_timeout_ms={v}: expected \
                         {HEARTBEAT_TIMEOUT_MS_MIN}..={HEARTBEAT_TIMEOUT_MS_MAX}"
                    ))
                }
            },
        };
        ClusterMode::On(ClusterConfig {
            quorum_slot_nr,
            heartbeat_timeout_ms,
            key,
            insecure,
            fence_agent,
            orphan_scan_delay_ms,
            finalize_height,
        })
    }
}

/// What the kernel reads from the command line for itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub node: String,
    /// eth0 (`ip=`, default DHCP).
    pub net: NetConfig,
    /// eth1.. (`ip1=`, `ip2=`, ...; default off): index 0 is eth1.
    pub extra_nets: Vec<NetConfig>,
    /// Cluster membership (`quorum_slot_nr=`, ...).
    pub cluster: ClusterMode,
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

/// Parse `ip=` (`key` "ip", with `netmask=`/`gateway=`) or `ipN=` (`key`
/// "ipN": a prefix length only; no gateway, the default route stays on
/// eth0). A bad value falls back to DHCP on eth0 and to off on the others.
fn parse_ip_spec(c: &Cmdline, key: &str, ip: &str, errors: &mut Vec<ConfigError>) -> NetConfig {
    let first = key == "ip";
    let fallback = if first {
        NetConfig::Dhcp
    } else {
        NetConfig::Off
    };
    let fallback_name = if first { "DHCP" } else { "off" };
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
            "{key}={ip}: not an IPv4 address; using {fallback_name}"
        )));
        return fallback;
    };
    let netmask = if first { c.get("netmask") } else { None };
    let prefix = match (prefix_s, netmask) {
        (Some(p), _) => match p.parse::<u8>() {
            Ok(p) if p <= 32 => p,
            _ => {
                errors.push(ConfigError(format!(
                    "{key}={ip}: bad prefix length; using {fallback_name}"
                )));
                return fallback;
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
    let gateway = match c.get("gateway").filter(|_| first) {
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
    /// How card `i` (eth`i`) is configured.
    pub fn net_for(&self, i: usize) -> NetConfig {
        match i {
            0 => self.net.clone(),
            _ => self
                .extra_nets
                .get(i - 1)
                .cloned()
                .unwrap_or(NetConfig::Off),
        }
    }

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
            Some(ip) => parse_ip_spec(c, "ip", ip, &mut errors),
        };
        let mut extra_nets = Vec::new();
        for i in 1..NICS_MAX {
            let key = format!("ip{i}");
            if let Some(ip) = c.get(&key) {
                extra_nets.resize(i, NetConfig::Off);
                extra_nets[i - 1] = parse_ip_spec(c, &key, ip, &mut errors);
            }
        }
        for (k, _) in c.pairs() {
            let n = k.strip_prefix("ip").and_then(|n| n.parse::<usize>().ok());
            if n.is_some_and(|n| n == 0 || n >= NICS_MAX) {
                errors.push(ConfigError(format!(
                    "{k}=: at most {NICS_MAX} cards (ip=, ip1=..ip{}=); ignored",
                    NICS_MAX - 1
                )));
            }
        }
        let cluster = ClusterMode::from_cmdline(c);
        if let ClusterMode::Invalid(why) = &cluster {
            errors.push(ConfigError(format!(
                "{why}; this node will neither join the cluster nor mount the volume"
            )));
        }
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
                extra_nets,
                cluster,
                log,
                panic_at_boot,
            },
            errors,
        )
    }
}

/// A TCP port word (`fuse.port=`, ...): `default` when absent, else
/// 1..=65535 in decimal digits.
pub fn port_word(c: &Cmdline, key: &str, default: u16) -> Result<u16, String> {
    let Some(v) = c.get(key) else {
        return Ok(default);
    };
    if v.is_empty() || v.len() > 5 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{key}={v}: expected 1..=65535"));
    }
    v.parse::<u16>()
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| format!("{key}={v}: expected 1..=65535"))
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

    #[test]
    fn socket_addresses() {
        assert_eq!(
            parse_socket_addr("10.77.0.11:7100"),
            Some(([10, 77, 0, 11], 7100))
        );
        assert_eq!(parse_socket_addr("0.0.0.0:65535"), Some(([0; 4], 65535)));
        for bad in [
            "",
            ":",
            "10.77.0.11",
            "10.77.0.11:",
            "10.77.0.11:0",
            "10.77.0.11:65536",
            "10.77.0.11:+80",
            "10.77.0:80",
            "10.77.0.11:80:1",
            "host:80",
        ] {
            assert_eq!(parse_socket_addr(bad), None, "{bad}");
        }
    }

    #[test]
    fn second_card_and_its_defaults() {
        let (cfg, errs) = Config::from_cmdline(&Cmdline::parse(
            "ip=10.0.2.15/24 gateway=10.0.2.2 ip1=10.77.0.11/24",
        ));
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(
            cfg.net_for(1),
            NetConfig::Static {
                addr: [10, 77, 0, 11],
                prefix: 24,
                gateway: None
            },
            "the gateway belongs to eth0 only"
        );
        assert_eq!(cfg.net_for(2), NetConfig::Off);
        assert_eq!(cfg.net_for(0), cfg.net);
        // ip2 alone leaves eth1 off; a bad ip1 is off, not DHCP
        let (cfg, errs) = Config::from_cmdline(&Cmdline::parse("ip2=10.1.0.1 ip1=10.9.9"));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0]
            .0
            .starts_with("ip1=10.9.9: not an IPv4 address; using off"));
        assert_eq!(cfg.net_for(1), NetConfig::Off);
        assert_eq!(
            cfg.net_for(2),
            NetConfig::Static {
                addr: [10, 1, 0, 1],
                prefix: 24,
                gateway: None
            }
        );
        assert_eq!(cfg.net_for(1 + NICS_MAX), NetConfig::Off);
        let (_, errs) = Config::from_cmdline(&Cmdline::parse("ip9=10.1.0.1 ip0=dhcp"));
        assert_eq!(errs.len(), 2, "{errs:?}");
    }

    #[test]
    fn cluster_words() {
        let mode = |s: &str| ClusterMode::from_cmdline(&Cmdline::parse(s));
        assert_eq!(mode("ip=dhcp"), ClusterMode::Off);
        assert!(!mode("cluster=0").is_cluster());
        assert_eq!(
            mode("quorum_slot_nr=2"),
            ClusterMode::On(ClusterConfig {
                quorum_slot_nr: Some(2),
                heartbeat_timeout_ms: HEARTBEAT_TIMEOUT_MS_DEFAULT,
                key: None,
                insecure: false,
                fence_agent: None,
                orphan_scan_delay_ms: ORPHAN_SCAN_DELAY_MS_DEFAULT,
                finalize_height: None,
            })
        );
        assert_eq!(
            mode("cluster=1 quorum_heartbeat_timeout_ms=3000"),
            ClusterMode::On(ClusterConfig {
                quorum_slot_nr: None,
                heartbeat_timeout_ms: 3000,
                key: None,
                insecure: false,
                fence_agent: None,
                orphan_scan_delay_ms: ORPHAN_SCAN_DELAY_MS_DEFAULT,
                finalize_height: None,
            }),
            "a client-only node"
        );
        for (ms, ok) in [
            ("2000", true),
            ("60000", true),
            ("1999", false),
            ("60001", false),
            ("-5", false),
            ("10s", false),
        ] {
            let m = mode(&format!(
                "quorum_slot_nr=0 quorum_heartbeat_timeout_ms={ms}"
            ));
            assert_eq!(matches!(m, ClusterMode::On(_)), ok, "{ms}: {m:?}");
            assert!(
                m.is_cluster(),
                "an invalid word still keeps the volume unmounted"
            );
        }
        for (ms, ok) in [
            ("100", true),
            ("60000", true),
            ("99", false),
            ("60001", false),
            ("1e3", false),
        ] {
            let m = mode(&format!("cluster=1 orphan_scan_delay_ms={ms}"));
            match m {
                ClusterMode::On(c) => {
                    assert!(ok, "{ms}");
                    assert_eq!(c.orphan_scan_delay_ms.to_string(), ms);
                }
                m => assert!(!ok && matches!(m, ClusterMode::Invalid(_)), "{ms}: {m:?}"),
            }
        }
        assert_eq!(
            mode("orphan_scan_delay_ms=500"),
            ClusterMode::Off,
            "it only qualifies a member"
        );
        for (h, want) in [
            ("1", Some(Some(1))),
            ("8", Some(Some(8))),
            ("0", None),
            ("9", None),
            ("x", None),
        ] {
            let m = mode(&format!("cluster=1 log_merge.finalize_height={h}"));
            match (m, want) {
                (ClusterMode::On(c), Some(w)) => assert_eq!(c.finalize_height, w, "{h}"),
                (ClusterMode::Invalid(why), None) => assert!(why.contains("1..=8"), "{why}"),
                (m, w) => panic!("finalize_height={h}: {m:?}, wanted {w:?}"),
            }
        }
        match mode("cluster=1") {
            ClusterMode::On(c) => assert_eq!(c.finalize_height, None, "the server's default"),
            m => panic!("{m:?}"),
        }
        for bad in [
            "quorum_slot_nr=15",
            "quorum_slot_nr=x",
            "cluster=yes",
            "cluster=0 quorum_slot_nr=1",
        ] {
            let m = mode(bad);
            assert!(matches!(m, ClusterMode::Invalid(_)), "{bad}: {m:?}");
        }
        assert!(matches!(mode("quorum_slot_nr=14"), ClusterMode::On(_)));
        // the error reaches the boot log
        let (cfg, errs) = Config::from_cmdline(&Cmdline::parse("quorum_heartbeat_timeout_ms=1"));
        assert!(matches!(cfg.cluster, ClusterMode::Invalid(_)));
        assert_eq!(errs.len(), 1);
        assert!(errs[0].0.contains("2000..=60000"), "{errs:?}");
    }

    #[test]
    fn cluster_key_words() {
        let mode = |s: &str| ClusterMode::from_cmdline(&Cmdline::parse(s));
        let hex = "0123456789abcdef".repeat(4);
        match mode(&format!("quorum_slot_nr=1 cluster.key={hex}")) {
            ClusterMode::On(c) => {
                assert_eq!(c.key.unwrap().to_hex(), hex);
                assert!(!c.insecure);
            }
            m => panic!("{m:?}"),
        }
        match mode("quorum_slot_nr=1 cluster.insecure=1") {
            ClusterMode::On(c) => assert!(c.insecure && c.key.is_none()),
            m => panic!("{m:?}"),
        }
        for bad in [
            format!("quorum_slot_nr=1 cluster.key={}", &hex[1..]),
            format!("quorum_slot_nr=1 cluster.key={}x", &hex[1..]),
            "quorum_slot_nr=1 cluster.key=".to_string(),
            "quorum_slot_nr=1 cluster.insecure=yes".to_string(),
        ] {
            let m = mode(&bad);
            assert!(matches!(m, ClusterMode::Invalid(_)), "{bad}: {m:?}");
            // a refused key is never echoed
            if let ClusterMode::Invalid(why) = m {
                assert!(!why.contains(&hex[1..20]), "{why}");
            }
        }
        // without a cluster word the key alone does not make a member
        assert_eq!(mode(&format!("cluster.key={hex}")), ClusterMode::Off);
    }

    #[test]
    fn fence_agent_word() {
        let mode = |s: &str| ClusterMode::from_cmdline(&Cmdline::parse(s));
        match mode("quorum_slot_nr=0 fence.agent=10.0.2.2:7700") {
            ClusterMode::On(c) => assert_eq!(c.fence_agent.as_deref(), Some("10.0.2.2:7700")),
            m => panic!("{m:?}"),
        }
        match mode("quorum_slot_nr=0") {
            ClusterMode::On(c) => assert_eq!(c.fence_agent, None),
            m => panic!("{m:?}"),
        }
        for bad in ["10.0.2.2", "10.0.2.2:0", "host:7700", "10.0.2.2:70000", ""] {
            let m = mode(&format!("quorum_slot_nr=0 fence.agent={bad}"));
            assert!(
                matches!(m, ClusterMode::Invalid(ref w) if w.contains("fence.agent")),
                "{bad}: {m:?}"
            );
        }
    }

    #[test]
    fn port_words() {
        let c = Cmdline::parse("fuse.port=7000 a.port=0 b.port=70000 c.port=+5 d.port=x e.port=");
        assert_eq!(port_word(&c, "fuse.port", 7564), Ok(7000));
        assert_eq!(port_word(&c, "missing.port", 7564), Ok(7564));
        for k in ["a.port", "b.port", "c.port", "d.port", "e.port"] {
            let e = port_word(&c, k, 1).unwrap_err();
            assert!(e.starts_with(k) && e.contains("1..=65535"), "{e}");
        }
    }
}
