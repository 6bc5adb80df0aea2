//! Process and root settings of the spec, checked from inside real containers run by the
//! real agent on this host (as root): domainname, execution domain, scheduler, I/O
//! priority, CPU affinity and the root's mount propagation, and the fields the agent
//! refuses.

mod common;

use common::*;

/// Adds busybox applets the shared harness does not link.
fn add_applets(agent: &TestAgent, applets: &[&str]) {
    for applet in applets {
        let link = agent.rootfs.join("bin").join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", link).unwrap();
        }
    }
}

/// Field `n` (1-based, as in proc(5)) of a /proc/<pid>/stat line.
fn stat_field(stat: &str, n: usize) -> &str {
    // The command name (field 2) may hold spaces; everything after its ')' splits cleanly.
    let rest = &stat[stat.rfind(')').expect("stat has a comm field") + 2..];
    rest.split(' ').nth(n - 3).expect("stat field")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domainname_personality_scheduler_io_priority_and_affinity() {
    let (agent, client) = TestAgent::start("process-extras").await;
    add_applets(&agent, &["uname", "ionice", "taskset"]);
    let mut spec = agent.spec(&[
        "sh",
        "-c",
        "cat /proc/sys/kernel/domainname; uname -m; ionice; taskset -p $$; cat /proc/self/stat",
    ]);
    spec["domainname"] = json!("example.org");
    spec["linux"]["personality"] = json!({"domain": "LINUX32"});
    spec["process"]["scheduler"] = json!({"policy": "SCHED_BATCH", "nice": 7});
    spec["process"]["ioPriority"] = json!({"class": "IOPRIO_CLASS_IDLE", "priority": 0});
    spec["process"]["execCPUAffinity"] = json!({"initial": "0", "final": "0"});
    let (status, out, err) = run(&client, &agent, "extras", &spec).await;
    assert_eq!(status, 0, "stdout: {out}\nstderr: {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "{out}");
    assert_eq!(lines[0], "example.org");
    assert_eq!(
        lines[1], "i686",
        "PER_LINUX32 makes uname report a 32-bit machine"
    );
    assert!(lines[2].starts_with("idle"), "ionice: {}", lines[2]);
    assert!(lines[3].ends_with(": 1"), "taskset: {}", lines[3]);
    // nice is field 19, policy field 41 (SCHED_BATCH = 3); both survive fork and exec.
    assert_eq!(stat_field(lines[4], 19), "7", "{}", lines[4]);
    assert_eq!(stat_field(lines[4], 41), "3", "{}", lines[4]);
    agent.assert_clean();
}

/// The optional fields of the mountinfo line of `/`, from inside a container.
async fn root_propagation(
    client: &AgentClient,
    agent: &TestAgent,
    id: &str,
    value: Option<&str>,
) -> String {
    let mut spec = agent.spec(&["cat", "/proc/self/mountinfo"]);
    if let Some(value) = value {
        spec["linux"]["rootfsPropagation"] = json!(value);
    }
    let (status, out, err) = run(client, agent, id, &spec).await;
    assert_eq!(status, 0, "stdout: {out}\nstderr: {err}");
    // "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - TYPE ..."
    let line = out
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/"))
        .expect("a mountinfo line for /");
    let fields: Vec<&str> = line.split(' ').collect();
    let end = fields.iter().position(|f| *f == "-").expect("separator");
    fields[6..end].join(" ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_propagation_follows_the_spec() {
    let (agent, client) = TestAgent::start("root-propagation").await;
    let shared = root_propagation(&client, &agent, "shared", Some("rshared")).await;
    assert!(shared.contains("shared:"), "rshared root: {shared:?}");
    let private = root_propagation(&client, &agent, "private", Some("rprivate")).await;
    assert_eq!(private, "", "rprivate root has no peer group");
    let default = root_propagation(&client, &agent, "default", None).await;
    assert!(!default.contains("shared:"), "default root: {default:?}");
    agent.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fields_the_agent_cannot_honour_are_refused_by_name() {
    let (agent, client) = TestAgent::start("refused-fields").await;
    let cases: &[(&str, &str, Value)] = &[
        ("linux", "rootfsPropagation", json!("sideways")),
        ("linux", "intelRdt", json!({"closID": "guaranteed"})),
        ("linux", "netDevices", json!({"eth9": {"name": "eth1"}})),
        ("process", "scheduler", json!({"policy": "SCHED_FIFO"})),
        (
            "process",
            "ioPriority",
            json!({"class": "IOPRIO_CLASS_BE", "priority": 9}),
        ),
        ("process", "execCPUAffinity", json!({"final": "7-2"})),
    ];
    for (i, (section, key, value)) in cases.iter().enumerate() {
        let mut spec = agent.spec(&["true"]);
        spec[section][key] = value.clone();
        let id = format!("refused-{i}");
        let err = create(&client, &agent, &id, &spec).await.unwrap_err();
        assert_eq!(
            code(&err),
            Code::INVALID_ARGUMENT,
            "{key}: {}",
            message(&err)
        );
        let field = format!("{section}.{key}");
        assert!(message(&err).contains(&field), "{field}: {}", message(&err));
    }
    let mut spec = agent.spec(&["true"]);
    spec["domainname"] = json!("example.org");
    spec["linux"]["namespaces"] = json!([{"type": "pid"}, {"type": "mount"}]);
    spec.as_object_mut().unwrap().remove("hostname");
    let err = create(&client, &agent, "no-uts", &spec).await.unwrap_err();
    assert!(message(&err).contains("domainname"), "{}", message(&err));
    agent.assert_clean();
}
