//! The container's device policy as data: which device nodes its processes may make, read and
//! write (the default list, the file's `devices:` and `device_cgroup_rules`). The kernel side,
//! the cgroup v1 allow list and the v2 eBPF program made from these rules, is
//! `runtime::linux::devices`.

use serde::{Deserialize, Serialize};

/// What a process asks of a device (the kernel's `BPF_DEVCG_ACC_*` bits).
pub const MKNOD: u8 = 1;
pub const READ: u8 = 2;
pub const WRITE: u8 = 4;
pub const ALL_ACCESS: u8 = MKNOD | READ | WRITE;

/// Which devices a rule covers (the kernel's `BPF_DEVCG_DEV_*` values for block and char).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Kind {
    /// `a`: block and character devices.
    All,
    /// `b`
    Block,
    /// `c`
    Char,
}

impl Kind {
    pub(crate) fn code(self) -> Option<u32> {
        match self {
            Kind::All => None,
            Kind::Block => Some(1),
            Kind::Char => Some(2),
        }
    }

    fn letter(self) -> char {
        match self {
            Kind::All => 'a',
            Kind::Block => 'b',
            Kind::Char => 'c',
        }
    }
}

/// One allow rule: a kind, a major and minor number (`None` for `*`) and the access it grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Rule {
    pub kind: Kind,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    /// `MKNOD | READ | WRITE` bits.
    pub access: u8,
}

impl Rule {
    const fn char(major: u32, minor: Option<u32>) -> Rule {
        Rule {
            kind: Kind::Char,
            major: Some(major),
            minor,
            access: ALL_ACCESS,
        }
    }

    /// Whether this rule lets a process do `access` on the device `kind` `major:minor`.
    pub fn allows(&self, kind: Kind, major: u32, minor: u32, access: u8) -> bool {
        (self.kind == Kind::All || self.kind == kind)
            && self.major.is_none_or(|m| m == major)
            && self.minor.is_none_or(|m| m == minor)
            && access & !self.access == 0
    }

    /// The rule as cgroup v1's `devices.allow` takes it (`c 1:3 rwm`).
    pub fn v1_line(&self) -> String {
        let num = |n: Option<u32>| n.map_or("*".to_string(), |n| n.to_string());
        let mut acc = String::new();
        for (bit, c) in [(READ, 'r'), (WRITE, 'w'), (MKNOD, 'm')] {
            if self.access & bit != 0 {
                acc.push(c);
            }
        }
        format!(
            "{} {}:{} {acc}",
            self.kind.letter(),
            num(self.major),
            num(self.minor)
        )
    }
}

/// Parses permissions as Compose and Docker write them (`r`, `rw`, `rwm`, any order).
/// A device permission or rule that does not parse: what is wrong, with an example.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RuleError(String);

pub fn parse_access(s: &str) -> Result<u8, RuleError> {
    let mut acc = 0;
    for c in s.chars() {
        acc |= match c {
            'r' => READ,
            'w' => WRITE,
            'm' => MKNOD,
            _ => {
                return Err(RuleError(format!(
                    "`{s}` is not a set of device permissions (letters r, w and m)"
                )));
            }
        };
    }
    if acc == 0 {
        return Err(RuleError(
            "empty device permissions (use r, w and m)".into(),
        ));
    }
    Ok(acc)
}

/// Parses one `device_cgroup_rules` entry: `TYPE MAJOR:MINOR ACCESS`, as in `c 1:3 mr` or
/// `a 7:* rmw` (Docker's syntax, which is cgroup v1's).
pub fn parse_rule(s: &str) -> Result<Rule, RuleError> {
    let bad = |why: &str| {
        RuleError(format!(
            "`{s}` is not a device cgroup rule ({why}; e.g. `c 1:3 rwm`)"
        ))
    };
    let mut parts = s.split_whitespace();
    let kind = match parts.next() {
        Some("a") => Kind::All,
        Some("b") => Kind::Block,
        Some("c") => Kind::Char,
        _ => return Err(bad("the type is a, b or c")),
    };
    let Some((maj, min)) = parts.next().and_then(|n| n.split_once(':')) else {
        return Err(bad("expected MAJOR:MINOR"));
    };
    let num = |n: &str| -> Result<Option<u32>, RuleError> {
        if n == "*" {
            Ok(None)
        } else {
            n.parse()
                .map(Some)
                .map_err(|_| bad("a device number is a number or *"))
        }
    };
    let access = match parts.next() {
        Some(a) => parse_access(a).map_err(|e| bad(&e.0))?,
        None => return Err(bad("expected the permissions")),
    };
    if parts.next().is_some() {
        return Err(bad("too many fields"));
    }
    Ok(Rule {
        kind,
        major: num(maj)?,
        minor: num(min)?,
        access,
    })
}

/// The devices every container may use: runc's default allow list. Any character or block
/// device may be made (the node alone gives nothing), only these may be opened.
pub const DEFAULT_RULES: [Rule; 11] = [
    Rule {
        kind: Kind::Char,
        major: None,
        minor: None,
        access: MKNOD,
    },
    Rule {
        kind: Kind::Block,
        major: None,
        minor: None,
        access: MKNOD,
    },
    Rule::char(1, Some(3)), // /dev/null
    Rule::char(1, Some(5)), // /dev/zero
    Rule::char(1, Some(7)), // /dev/full
    Rule::char(1, Some(8)), // /dev/random
    Rule::char(1, Some(9)), // /dev/urandom
    Rule::char(5, Some(0)), // /dev/tty
    Rule::char(5, Some(1)), // /dev/console
    Rule::char(5, Some(2)), // /dev/ptmx
    Rule::char(136, None),  // /dev/pts/*
];

/// A container's device policy, as its cgroup carries it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Policy {
    /// `privileged: true`: every device, as on the host.
    #[serde(default)]
    pub allow_all: bool,
    /// Allowed beyond `DEFAULT_RULES`: the `devices:` entries and `device_cgroup_rules`.
    #[serde(default)]
    pub extra: Vec<Rule>,
}

impl Policy {
    /// Every allow rule of the policy (the default list, then the file's); empty with
    /// `allow_all`.
    pub fn rules(&self) -> Vec<Rule> {
        if self.allow_all {
            return Vec::new();
        }
        DEFAULT_RULES.iter().chain(&self.extra).copied().collect()
    }

    /// Whether the policy lets a process do `access` on a device.
    pub fn allows(&self, kind: Kind, major: u32, minor: u32, access: u8) -> bool {
        self.allow_all
            || self
                .rules()
                .iter()
                .any(|r| r.allows(kind, major, minor, access))
    }
}
