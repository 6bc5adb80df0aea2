//! The size of a pod's VM: the config's defaults, raised to fit the first container's
//! limits, and pod annotations where the config allows them (docs/configuration.md).

use oci_spec::runtime::Spec;
use runv_runtime::config::Config;

use crate::errors::ShimError;

/// Pod annotation: the VM's vCPU count.
pub const VCPUS_ANNOTATION: &str = "io.runv.vcpus";
/// Pod annotation: the VM's memory in MiB.
pub const MEMORY_ANNOTATION: &str = "io.runv.memory_mib";
/// Prefix of every runv annotation.
const PREFIX: &str = "io.runv.";
/// Guest memory on top of a container's limit, for the guest kernel and the agent.
pub const GUEST_BASE_MIB: u64 = 128;

/// vCPUs and memory (MiB) for the VM that `spec`'s container starts.
pub fn vm_size(spec: &Spec, config: &Config) -> Result<(u32, u32), ShimError> {
    let mut vcpus = config.hypervisor.vcpus;
    let mut memory_mib = config.hypervisor.memory_mib;
    let resources = spec.linux().as_ref().and_then(|l| l.resources().as_ref());
    if let Some(limit) = resources
        .and_then(|r| r.memory().as_ref())
        .and_then(|m| m.limit())
        .filter(|l| *l > 0)
    {
        let limit_mib = u64::try_from(limit).unwrap_or(0).div_ceil(1024 * 1024);
        let wanted = u32::try_from(limit_mib + GUEST_BASE_MIB).unwrap_or(u32::MAX);
        memory_mib = memory_mib.max(wanted);
    }
    if let Some(cpu) = resources.and_then(|r| r.cpu().as_ref()) {
        if let (Some(quota), Some(period)) = (cpu.quota(), cpu.period()) {
            if quota > 0 && period > 0 {
                let quota = u64::try_from(quota).unwrap_or(0);
                let wanted = u32::try_from(quota.div_ceil(period)).unwrap_or(u32::MAX);
                vcpus = vcpus.max(wanted);
            }
        }
    }
    for (name, value) in spec.annotations().iter().flatten() {
        if !name.starts_with(PREFIX) {
            continue;
        }
        if !config.runtime.annotation_allowed(name) {
            return Err(ShimError::InvalidArgument(format!(
                "annotation {name} is not allowed by the runv config (runtime.allowed_annotations)"
            )));
        }
        let number = || {
            value.trim().parse::<u32>().map_err(|_| {
                ShimError::InvalidArgument(format!(
                    "annotation {name}: {value:?} is not a whole number"
                ))
            })
        };
        match name.as_str() {
            VCPUS_ANNOTATION => vcpus = number()?,
            MEMORY_ANNOTATION => memory_mib = number()?,
            _ => {
                return Err(ShimError::InvalidArgument(format!(
                    "annotation {name} is not known to runv ({VCPUS_ANNOTATION} and \
                     {MEMORY_ANNOTATION} are)"
                )))
            }
        }
    }
    Ok((vcpus, memory_mib))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Spec {
        let mut base: serde_json::Value =
            serde_json::from_str(r#"{"ociVersion": "1.0.2", "root": {"path": "rootfs"}}"#).unwrap();
        let extra: serde_json::Value = serde_json::from_str(json).unwrap();
        for (k, v) in extra.as_object().unwrap() {
            base[k] = v.clone();
        }
        serde_json::from_value(base).unwrap()
    }

    fn config(allowed: &[&str]) -> Config {
        let mut config = Config::default();
        config.hypervisor.vcpus = 1;
        config.hypervisor.memory_mib = 256;
        config.runtime.allowed_annotations = allowed.iter().map(|s| s.to_string()).collect();
        config
    }

    #[test]
    fn defaults_without_limits() {
        assert_eq!(vm_size(&spec("{}"), &config(&[])).unwrap(), (1, 256));
    }

    #[test]
    fn limits_raise_the_size() {
        let s = spec(
            r#"{"linux": {"resources": {"memory": {"limit": 536870912},
                "cpu": {"quota": 250000, "period": 100000}}}}"#,
        );
        assert_eq!(vm_size(&s, &config(&[])).unwrap(), (3, 512 + 128));
        // A small limit does not shrink the VM below the defaults.
        let s = spec(r#"{"linux": {"resources": {"memory": {"limit": 1048576}}}}"#);
        assert_eq!(vm_size(&s, &config(&[])).unwrap(), (1, 256));
    }

    #[test]
    fn allowed_annotations_win() {
        let s = spec(
            r#"{"annotations": {"io.runv.vcpus": "2", "io.runv.memory_mib": "1024",
                "io.kubernetes.cri.sandbox-id": "x"}}"#,
        );
        assert_eq!(vm_size(&s, &config(&["io.runv.*"])).unwrap(), (2, 1024));
        assert_eq!(
            vm_size(&s, &config(&["io.runv.vcpus", "io.runv.memory_mib"])).unwrap(),
            (2, 1024)
        );
    }

    #[test]
    fn bad_annotations_are_named() {
        let s = spec(r#"{"annotations": {"io.runv.vcpus": "2"}}"#);
        let err = vm_size(&s, &config(&[])).unwrap_err();
        assert!(
            err.to_string().contains("io.runv.vcpus is not allowed"),
            "{err}"
        );
        let s = spec(r#"{"annotations": {"io.runv.vcpus": "many"}}"#);
        let err = vm_size(&s, &config(&["io.runv.*"])).unwrap_err();
        assert!(err.to_string().contains("not a whole number"), "{err}");
        let s = spec(r#"{"annotations": {"io.runv.disk": "1"}}"#);
        let err = vm_size(&s, &config(&["io.runv.*"])).unwrap_err();
        assert!(
            err.to_string().contains("io.runv.disk is not known"),
            "{err}"
        );
        assert_eq!(
            err.code(),
            containerd_shim::protos::ttrpc::Code::INVALID_ARGUMENT
        );
    }
}
