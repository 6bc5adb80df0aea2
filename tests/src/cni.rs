//! Pod networks made the way a CNI runtime makes them: a network namespace per pod, and
//! Debian's `bridge` + `host-local` plugins run directly (`CNI_COMMAND=ADD`/`DEL`) with a
//! bridge and subnet of the test's own. Dropping it runs DEL and removes what it made.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Where Debian's containernetworking-plugins puts the plugins.
pub const CNI_PATH: &str = "/usr/lib/cni";

/// A bridge network with its own subnet `10.<a>.<b>.0/24`.
pub struct Bridge {
    pub name: String,
    pub subnet_prefix: String,
    pub mtu: u32,
    data: tempfile::TempDir,
    pods: Vec<(String, String)>,
}

/// One pod namespace on a [`Bridge`].
pub struct Pod {
    pub netns: String,
    pub address: String,
    pub mac: String,
}

impl Pod {
    /// The namespace's path.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.netns))
    }
}

impl Bridge {
    /// A bridge of its own name and subnet, unique per test process and call.
    pub fn new(mtu: u32) -> Self {
        assert!(
            Path::new(CNI_PATH).join("bridge").exists(),
            "{CNI_PATH}/bridge missing: scripts/install-deps.sh installs containernetworking-plugins"
        );
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        Self {
            name: format!("rvb{}-{n}", pid % 100_000),
            subnet_prefix: format!("10.{}.{}", 150 + n % 100, pid % 250),
            mtu,
            data: tempfile::Builder::new()
                .prefix("runv-cni")
                .tempdir()
                .expect("temp dir"),
            pods: Vec::new(),
        }
    }

    fn config(&self) -> String {
        format!(
            r#"{{"cniVersion":"1.0.0","name":"{name}","type":"bridge","bridge":"{name}",
               "isGateway":true,"ipMasq":false,"mtu":{mtu},
               "ipam":{{"type":"host-local","ranges":[[{{"subnet":"{p}.0/24"}}]],
                        "routes":[{{"dst":"0.0.0.0/0"}}],"dataDir":"{data}"}}}}"#,
            name = self.name,
            mtu = self.mtu,
            p = self.subnet_prefix,
            data = self.data.path().display()
        )
    }

    fn plugin(&self, command: &str, id: &str, netns: &str) -> std::process::Output {
        let mut child = Command::new(Path::new(CNI_PATH).join("bridge"))
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", format!("/run/netns/{netns}"))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", CNI_PATH)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run the bridge plugin");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(self.config().as_bytes())
            .expect("config to the plugin");
        child.wait_with_output().expect("bridge plugin")
    }

    /// A new namespace `tag` on the bridge (CNI ADD); its address and MAC as the plugin says.
    pub fn add_pod(&mut self, tag: &str) -> Pod {
        let netns = format!("{}-{tag}", self.name);
        let _ = Command::new("ip")
            .args(["netns", "del", &netns])
            .stderr(Stdio::null())
            .status();
        let status = Command::new("ip").args(["netns", "add", &netns]).status();
        assert!(status.is_ok_and(|s| s.success()), "ip netns add {netns}");
        self.pods.push((tag.to_string(), netns.clone()));
        let out = self.plugin("ADD", tag, &netns);
        assert!(
            out.status.success(),
            "CNI ADD: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let result: serde_json::Value = serde_json::from_slice(&out.stdout).expect("CNI result");
        let address = result["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .expect("an address")
            .to_string();
        let mac = result["interfaces"]
            .as_array()
            .and_then(|i| i.iter().find(|i| i["sandbox"].is_string()))
            .and_then(|i| i["mac"].as_str())
            .expect("the pod interface's MAC")
            .to_string();
        Pod {
            netns,
            address,
            mac,
        }
    }

    /// Makes the CNI configuration dir `conf` and plugin dir `bin` (as containerd's CRI
    /// plugin reads them) use this bridge.
    pub fn install_for_cri(&self, conf: &Path, bin: &Path) {
        for plugin in ["bridge", "host-local", "loopback"] {
            let link = bin.join(plugin);
            if !link.exists() {
                std::os::unix::fs::symlink(Path::new(CNI_PATH).join(plugin), link)
                    .expect("link a CNI plugin");
            }
        }
        let list = format!(
            r#"{{"cniVersion":"1.0.0","name":"{}","plugins":[{}]}}"#,
            self.name,
            self.config()
        );
        std::fs::write(conf.join("10-runv-test.conflist"), list).expect("CNI config");
    }

    /// The gateway (the bridge's own address).
    pub fn gateway(&self) -> String {
        format!("{}.1", self.subnet_prefix)
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        for (tag, netns) in std::mem::take(&mut self.pods) {
            let _ = self.plugin("DEL", &tag, &netns);
            let _ = Command::new("ip").args(["netns", "del", &netns]).status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// `ip -n NETNS ARGS...`'s output (empty on failure).
pub fn ip_in(netns: &str, args: &[&str]) -> String {
    Command::new("ip")
        .args(["-n", netns])
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// `tc ARGS...` in NETNS (empty on failure).
pub fn tc_in(netns: &str, args: &[&str]) -> String {
    Command::new("ip")
        .args(["netns", "exec", netns, "tc"])
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}
