//! A small lab of network namespaces joined by a bridge: several "hosts" on one machine.
//!
//! Every namespace, veth and address is named after this process (`hy<pid>…`, a private
//! 10.x.y.0/24 subnet), so parallel test runs do not collide, and everything is deleted when the
//! [`Lab`] is dropped — also when a test panics. Traffic stays inside these namespaces.

use std::process::Command;

/// Why the lab cannot run here (not root, no `ip netns`), for [`crate::require_or_skip`].
pub fn unavailable() -> Option<String> {
    let uid = match Command::new("id").arg("-u").output() {
        Ok(o) => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        Err(e) => return Some(format!("cannot tell whether this is root (`id -u`: {e})")),
    };
    if uid != "0" {
        return Some("network namespace tests need root".into());
    }
    match Command::new("ip").args(["netns", "list"]).output() {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "`ip netns` fails: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Some(format!("`ip` is not available: {e}")),
    }
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let o = Command::new("ip").args(args).output()?;
    anyhow::ensure!(
        o.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr).trim()
    );
    Ok(())
}

/// Namespaces `0..n` on one bridge (a dedicated "switch" namespace).
pub struct Lab {
    tag: String,
    switch: String,
    hosts: Vec<String>,
    subnet: String,
}

impl Lab {
    /// Creates `n` hosts. `id` distinguishes several labs in one process.
    pub fn new(n: usize, id: u8) -> anyhow::Result<Lab> {
        let pid = std::process::id();
        let tag = format!("hy{}{}", pid % 100_000, id);
        let subnet = format!(
            "10.{}.{}",
            100 + (pid % 100) as u8 / 2 + id,
            (pid / 100 % 250) as u8
        );
        let mut lab = Lab {
            switch: format!("{tag}sw"),
            hosts: Vec::new(),
            tag,
            subnet,
        };
        ip(&["netns", "add", &lab.switch])?;
        let sw = lab.switch.clone();
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        ip(&["-n", &sw, "link", "set", "lo", "up"])?;
        for i in 0..n {
            lab.add_host(i)?;
        }
        Ok(lab)
    }

    fn add_host(&mut self, i: usize) -> anyhow::Result<()> {
        let ns = format!("{}h{i}", self.tag);
        ip(&["netns", "add", &ns])?;
        self.hosts.push(ns.clone());
        let (a, b) = (format!("{}a{i}", self.tag), format!("{}b{i}", self.tag));
        ip(&["link", "add", &a, "type", "veth", "peer", "name", &b])?;
        ip(&["link", "set", &a, "netns", &ns])?;
        ip(&["link", "set", &b, "netns", &self.switch])?;
        ip(&["-n", &ns, "link", "set", &a, "name", "eth0"])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{}/24", self.addr(i)),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip(&["-n", &self.switch, "link", "set", &b, "master", "br0"])?;
        ip(&["-n", &self.switch, "link", "set", &b, "up"])?;
        Ok(())
    }

    /// Adds a host behind a NAT: a router namespace on the bridge (public address
    /// `addr(nat)`) masquerading, with nftables, a private namespace (192.168.`k`.2) whose only
    /// route is through it. Hosts on the bridge have no route to the private subnet, so a node
    /// there can only dial out. Returns (nat host index, private host index); both are hosts of
    /// the lab ([`Lab::command`], deleted on drop). Needs `nft` (Debian package `nftables`).
    pub fn add_behind_nat(&mut self, k: u8) -> anyhow::Result<(usize, usize)> {
        let nat = self.hosts.len();
        self.add_host(nat)?;
        let nat_ns = self.hosts[nat].clone();
        let private = self.hosts.len();
        let ns = format!("{}p{private}", self.tag);
        ip(&["netns", "add", &ns])?;
        self.hosts.push(ns.clone());
        let (a, b) = (format!("{}n{k}", self.tag), format!("{}m{k}", self.tag));
        ip(&["link", "add", &a, "type", "veth", "peer", "name", &b])?;
        ip(&["link", "set", &a, "netns", &nat_ns])?;
        ip(&["link", "set", &b, "netns", &ns])?;
        ip(&["-n", &nat_ns, "link", "set", &a, "name", "lan0"])?;
        ip(&[
            "-n",
            &nat_ns,
            "addr",
            "add",
            &format!("192.168.{k}.1/24"),
            "dev",
            "lan0",
        ])?;
        ip(&["-n", &nat_ns, "link", "set", "lan0", "up"])?;
        ip(&["-n", &ns, "link", "set", &b, "name", "eth0"])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("192.168.{k}.2/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            &ns,
            "route",
            "add",
            "default",
            "via",
            &format!("192.168.{k}.1"),
        ])?;
        let sysctl = Command::new("ip")
            .args([
                "netns",
                "exec",
                &nat_ns,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ])
            .output()?;
        anyhow::ensure!(
            sysctl.status.success(),
            "sysctl ip_forward: {}",
            String::from_utf8_lossy(&sysctl.stderr).trim()
        );
        let rules = format!(
            "table ip hynat {{\n chain post {{\n  type nat hook postrouting priority 100; policy accept;\n  ip saddr 192.168.{k}.0/24 oifname \"eth0\" masquerade\n }}\n}}\n"
        );
        let mut nft = std::process::Command::new("ip")
            .args(["netns", "exec", &nat_ns, "nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot run nft (apt-get install nftables): {e}"))?;
        if let Some(mut stdin) = nft.stdin.take() {
            use std::io::Write;
            stdin.write_all(rules.as_bytes())?;
        }
        let out = nft.wait_with_output()?;
        anyhow::ensure!(
            out.status.success(),
            "nft: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok((nat, private))
    }

    /// Hosts `0..n` with only their loopback up: no link to the bridge (whose namespace is never
    /// created) and no address. Join them with whatever the test needs, such as an impaired
    /// point-to-point link ([`crate::impair::ImpairedLink`]); deleted on drop like any lab.
    pub fn isolated(n: usize, id: u8) -> anyhow::Result<Lab> {
        let pid = std::process::id();
        let tag = format!("hy{}{}", pid % 100_000, id);
        let mut lab = Lab {
            switch: format!("{tag}sw"),
            hosts: Vec::new(),
            tag,
            subnet: String::new(),
        };
        for _ in 0..n {
            lab.add_isolated_host()?;
        }
        Ok(lab)
    }

    /// Adds a host with only its loopback up (no bridge link, no address); returns its index.
    pub fn add_isolated_host(&mut self) -> anyhow::Result<usize> {
        let i = self.hosts.len();
        let ns = format!("{}x{i}", self.tag);
        ip(&["netns", "add", &ns])?;
        self.hosts.push(ns.clone());
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        Ok(i)
    }

    /// The prefix of every name of this lab (namespaces, interfaces): unique per process and
    /// lab id, at most 10 characters, so that `tag()` plus 5 characters is a valid interface name.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The address of host `i`.
    pub fn addr(&self, i: usize) -> String {
        format!("{}.{}", self.subnet, i + 1)
    }

    /// The namespace of host `i`.
    pub fn ns(&self, i: usize) -> &str {
        self.hosts.get(i).map(String::as_str).unwrap_or("")
    }

    /// A command running `program` inside host `i`.
    pub fn command(&self, i: usize, program: &str) -> tokio::process::Command {
        let mut c = tokio::process::Command::new("ip");
        c.args(["netns", "exec", self.ns(i), program]);
        c
    }

    /// Applies `tc netem` parameters (e.g. `delay 20ms loss 1%`) to host `i`'s interface.
    pub fn netem(&self, i: usize, params: &str) -> anyhow::Result<()> {
        let mut args = vec![
            "netns",
            "exec",
            self.ns(i),
            "tc",
            "qdisc",
            "replace",
            "dev",
            "eth0",
            "root",
            "netem",
        ];
        args.extend(params.split_whitespace());
        let o = Command::new("ip").args(&args).output()?;
        anyhow::ensure!(
            o.status.success(),
            "tc netem: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        );
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.hosts.iter().chain(std::iter::once(&self.switch)) {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}
