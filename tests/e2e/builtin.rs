//! The builtin backend (runv-vmm) end to end. A container runs on it only where KVM boots a
//! Linux guest (hardware virtualization); elsewhere the tests say what they skipped and check
//! what the host does allow: a clear refusal, and the guest kernel booting as far as this KVM
//! lets it.

use std::time::Duration;

use runv_tests::*;

fn kvm_kind() -> String {
    let out = run_with_limit(
        {
            let mut c = runv();
            c.args(["check", "--json"]);
            c
        },
        None,
        Duration::from_secs(20),
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("check --json");
    report["kvm"]["kind"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn builtin_backend_runs_a_container_where_kvm_boots_linux() {
    let kind = kvm_kind();
    let name = unique_name("builtin");
    let out = with_leak_check(&name, || {
        run_container(
            &name,
            &["--hypervisor", "builtin", "--", "uname", "-r"],
            None,
            Duration::from_secs(90),
        )
    });
    if kind == "hardware" {
        assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
        assert_eq!(stdout(&out).trim(), built_kernel_release());
    } else {
        eprintln!(
            "SKIPPED running a container on runv-vmm: this host's KVM is {kind:?}, which cannot boot a \
             Linux guest; checked instead that runv refuses the builtin backend with the reason"
        );
        assert_eq!(out.status.code(), Some(125), "stderr: {}", stderr(&out));
        assert!(
            stderr(&out).contains("The builtin hypervisor needs KVM that runs a Linux guest"),
            "stderr: {}",
            stderr(&out)
        );
    }
}

#[test]
fn builtin_backend_boots_the_guest_kernel_as_far_as_this_kvm_allows() {
    let kind = kvm_kind();
    if kind != "pvm" {
        eprintln!(
            "SKIPPED: this test forces runv-vmm onto kvm-pvm; this host's KVM is {kind:?} \
             (on hardware KVM the container test above covers the builtin backend)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(
        dir.path(),
        "[hypervisor]\nkind = \"builtin\"\nforce_kvm = true\nkernel_params = \"loglevel=7 earlyprintk=ttyS0\"\n\
         [runtime]\nboot_timeout_ms = 120000\n",
    );
    let name = unique_name("pvm");
    let out = with_leak_check(&name, || {
        let mut cmd = runv();
        cmd.env("RUNV_CONFIG", &config)
            .args(["run", "--rm", "--name", &name, "--", "true"]);
        run_with_limit(cmd, None, Duration::from_secs(150))
    });
    let err = stderr(&out);
    // runv-vmm built the VM, loaded our kernel through PVH with runv's command line and the
    // virtio-mmio devices, and the kernel ran until kvm-pvm could not emulate an instruction;
    // runv reports that with the VMM's reason and the guest console.
    assert_eq!(out.status.code(), Some(125), "stderr: {err}");
    assert!(
        err.contains("runv-vmm exited during start (exit status: 2)"),
        "stderr: {err}"
    );
    assert!(
        err.contains("guest crashed") && err.contains("KVM internal error"),
        "stderr: {err}"
    );
    assert!(
        err.contains("Kernel command line: reboot=k panic=1 virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6 console=ttyS0 rdinit=/init"),
        "the guest kernel ran and printed the exact command line: {err}"
    );
}
