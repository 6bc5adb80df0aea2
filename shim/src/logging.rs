//! The shim's log: containerd's `log` FIFO in the bundle (containerd copies it into its own
//! log), one logfmt line per record, each carrying the containerd namespace and the pod's
//! sandbox id so a pod's lines can be found among every shim's.

use containerd_shim::logger::FifoLogger;
use log::kv::{Error as KvError, Key, Source, Value, VisitSource};
use log::{LevelFilter, Log, Metadata, Record};

/// A record's own key-values followed by the pod's.
struct WithPod<'a> {
    own: &'a dyn Source,
    pod: [(&'static str, &'a str); 2],
}

impl Source for WithPod<'_> {
    fn visit<'kvs>(&'kvs self, visitor: &mut dyn VisitSource<'kvs>) -> Result<(), KvError> {
        self.own.visit(visitor)?;
        for (key, value) in &self.pod {
            visitor.visit_pair(Key::from_str(key), Value::from(*value))?;
        }
        Ok(())
    }
}

/// Adds `namespace` and `sandbox` to every record of the FIFO logger.
pub struct PodLogger {
    inner: FifoLogger,
    namespace: String,
    sandbox: String,
}

impl PodLogger {
    pub fn new(inner: FifoLogger, namespace: &str, sandbox: &str) -> Self {
        Self {
            inner,
            namespace: namespace.to_string(),
            sandbox: sandbox.to_string(),
        }
    }
}

impl Log for PodLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &Record) {
        let kvs = WithPod {
            own: record.key_values(),
            pod: [
                ("namespace", self.namespace.as_str()),
                ("sandbox", self.sandbox.as_str()),
            ],
        };
        self.inner.log(
            &Record::builder()
                .args(*record.args())
                .level(record.level())
                .target(record.target())
                .key_values(&kvs)
                .build(),
        );
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

/// The level: `RUST_LOG` if set, else info, or debug when containerd runs the shim with
/// `-debug` (containerd's own debug level).
fn level(debug: bool) -> LevelFilter {
    let configured = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(LevelFilter::Info);
    if debug {
        configured.max(LevelFilter::Debug)
    } else {
        configured
    }
}

/// Logs to the bundle's `log` FIFO from now on.
pub fn init(debug: bool, namespace: &str, sandbox: &str) -> std::io::Result<()> {
    let fifo = FifoLogger::new(namespace, sandbox)?;
    log::set_boxed_logger(Box::new(PodLogger::new(fifo, namespace, sandbox)))
        .map_err(std::io::Error::other)?;
    log::set_max_level(level(debug));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_names_the_pod() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, "").unwrap();
        let logger = PodLogger::new(FifoLogger::with_path(&path).unwrap(), "k8s.io", "pod-1");
        // The FIFO logger writes what the global level lets through.
        log::set_max_level(LevelFilter::Info);
        let own = [("container", "c1")];
        logger.log(
            &Record::builder()
                .args(format_args!("created"))
                .level(log::Level::Info)
                .key_values(&own)
                .build(),
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(r#"container="c1""#), "{text}");
        assert!(text.contains(r#"namespace="k8s.io""#), "{text}");
        assert!(text.contains(r#"sandbox="pod-1""#), "{text}");
        assert!(text.contains(r#"msg="created""#), "{text}");
    }

    #[test]
    fn debug_flag_raises_the_level() {
        assert!(level(true) >= LevelFilter::Debug);
    }
}
