//! A QMP client: QEMU's machine protocol over a Unix socket, enough to read and
//! set a device's properties (`qom-get`, `qom-set`).
//!
//! It owns the connection (greeting, `qmp_capabilities`, one command at a time,
//! events skipped) and QMP's errors; what is set and when is the caller's
//! (`hotplug`'s).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Why a QMP command failed.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket could not be reached, read or written.
    #[error("QMP socket {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// QEMU answered with an error, or with something that is not QMP.
    #[error("QMP {command}: {message}")]
    Refused { command: String, message: String },
}

/// A connection to QEMU's QMP socket.
pub struct Qmp {
    path: String,
    writer: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Qmp {
    /// Connects to `path` (trying for up to `wait`, while QEMU starts) and
    /// leaves capabilities negotiation mode.
    pub fn connect(path: &Path, wait: Duration) -> Result<Qmp, QmpError> {
        let name = path.display().to_string();
        let io = |source| QmpError::Io {
            path: name.clone(),
            source,
        };
        let started = Instant::now();
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if started.elapsed() > wait => return Err(io(e)),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(io)?;
        let reader = BufReader::new(stream.try_clone().map_err(io)?);
        let mut qmp = Qmp {
            path: name,
            writer: stream,
            reader,
        };
        let greeting = qmp.read()?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Refused {
                command: "greeting".into(),
                message: format!("not QMP: {greeting}"),
            });
        }
        qmp.execute("qmp_capabilities", json!({}))?;
        Ok(qmp)
    }

    fn read(&mut self) -> Result<Value, QmpError> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|source| QmpError::Io {
                path: self.path.clone(),
                source,
            })?;
        if n == 0 {
            return Err(QmpError::Io {
                path: self.path.clone(),
                source: std::io::ErrorKind::UnexpectedEof.into(),
            });
        }
        serde_json::from_str(&line).map_err(|e| QmpError::Refused {
            command: "read".into(),
            message: format!("{e}: {}", line.trim()),
        })
    }

    /// Runs `command` with `arguments`; its `return` value.
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, QmpError> {
        let request = json!({ "execute": command, "arguments": arguments });
        writeln!(self.writer, "{request}")
            .and_then(|()| self.writer.flush())
            .map_err(|source| QmpError::Io {
                path: self.path.clone(),
                source,
            })?;
        loop {
            let reply = self.read()?;
            if reply.get("event").is_some() {
                continue;
            }
            if let Some(e) = reply.get("error") {
                return Err(QmpError::Refused {
                    command: command.into(),
                    message: e
                        .get("desc")
                        .and_then(Value::as_str)
                        .unwrap_or("no description")
                        .into(),
                });
            }
            return Ok(reply.get("return").cloned().unwrap_or(Value::Null));
        }
    }

    /// `qom-set` of a device's property to a number.
    pub fn set(&mut self, path: &str, property: &str, value: u64) -> Result<(), QmpError> {
        self.execute(
            "qom-set",
            json!({ "path": path, "property": property, "value": value }),
        )
        .map(|_| ())
    }

    /// `qom-get` of a device's numeric property.
    pub fn get(&mut self, path: &str, property: &str) -> Result<u64, QmpError> {
        let v = self.execute("qom-get", json!({ "path": path, "property": property }))?;
        v.as_u64().ok_or_else(|| QmpError::Refused {
            command: "qom-get".into(),
            message: format!("{path} {property}: not a number: {v}"),
        })
    }
}
