//! A client of BIRD's control socket (what `birdc` speaks), with timeouts.
//!
//! The protocol (BIRD 2.0.12, `doc/reply_codes`): on connect BIRD greets with `0001 BIRD
//! <version> ready.`; each command is one line; a reply is lines `CODE-text` (more follow),
//! ` text` (continues the previous line's code) and a last `CODE text`. Codes 0xxx mean done,
//! 1xxx table rows, 2xxx table headings, 8xxx run-time errors, 9xxx parse errors; lines
//! starting with `+` are spontaneous messages, not part of the reply.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::status::{parse_protocols, parse_status, BirdStatus, PeerStatus};

/// Where Debian's bird2 puts the control socket.
pub const DEFAULT_SOCKET: &str = "/run/bird/bird.ctl";

/// A reply longer than this is refused (`show protocols all` of 1,000 peers is about 3 MB).
const MAX_REPLY: usize = 64 << 20;

/// Why a command got no answer, or a refusal.
#[derive(Debug, thiserror::Error)]
pub enum BirdcError {
    #[error("no BIRD at {}: no such socket (BIRD is not running there; its socket is set with -s)", .path.display())]
    NotRunning { path: PathBuf },
    #[error("no BIRD at {}: nothing listens on the socket (BIRD stopped?)", .path.display())]
    Refused { path: PathBuf },
    #[error("permission denied on {}: run as root or as a user the socket lets in", .path.display())]
    Permission { path: PathBuf },
    #[error("{}: {source}", .path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: BIRD did not answer `{cmd}` within {secs:.1} s", .path.display())]
    Timeout { path: PathBuf, cmd: String, secs: f64 },
    #[error("{}: not a BIRD 2 control socket, or a reply out of protocol: {what}", .path.display())]
    Protocol { path: PathBuf, what: String },
    #[error("`{0}`: a command is one line of text")]
    Command(String),
    /// BIRD answered with an error code (8xxx run-time, 9xxx parse).
    #[error("BIRD refused `{cmd}`: {message} (reply {code:04})")]
    Bird { cmd: String, code: u16, message: String },
}

/// One line of a reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplyLine {
    pub code: u16,
    pub text: String,
}

/// A whole reply: its lines in order, the last one's code ending it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Reply {
    pub lines: Vec<ReplyLine>,
}

/// How a line of the protocol reads.
enum Line<'a> {
    /// `CODE-text` (`last` false) or `CODE text` (`last` true).
    Coded { code: u16, text: &'a str, last: bool },
    /// ` text`: more of the previous code.
    More(&'a str),
    /// `+text`: printed by BIRD on its own, not part of a reply.
    Spontaneous,
}

fn classify(line: &str) -> Result<Line<'_>, String> {
    let b = line.as_bytes();
    if let Some(rest) = line.strip_prefix(' ') {
        return Ok(Line::More(rest));
    }
    if b.first() == Some(&b'+') {
        return Ok(Line::Spontaneous);
    }
    if b.len() >= 4 && b[..4].iter().all(u8::is_ascii_digit) {
        // Four ASCII digits: the slice and the parse cannot fail.
        let code = line[..4].parse().unwrap_or(0);
        match b.get(4) {
            None => return Ok(Line::Coded { code, text: "", last: true }),
            Some(b' ') => return Ok(Line::Coded { code, text: &line[5..], last: true }),
            Some(b'-') => return Ok(Line::Coded { code, text: &line[5..], last: false }),
            _ => {}
        }
    }
    Err(format!("unexpected line {line:?}"))
}

impl Reply {
    /// A reply from its text (lines after the greeting), for replies recorded elsewhere.
    pub fn parse(text: &str) -> Result<Reply, String> {
        let mut parser = ReplyParser::default();
        for line in text.lines() {
            if parser.push(line)? {
                return Ok(parser.reply);
            }
        }
        Err("the reply has no last line (CODE text)".into())
    }

    /// The last line's code: what the command came to.
    pub fn code(&self) -> u16 {
        self.lines.last().map_or(0, |l| l.code)
    }

    /// The text of every line, one per line.
    pub fn text(&self) -> String {
        self.lines.iter().map(|l| l.text.as_str()).collect::<Vec<_>>().join("\n")
    }

    /// An error reply (8xxx, 9xxx) as the error it is.
    fn into_result(self, cmd: &str) -> Result<Reply, BirdcError> {
        let code = self.code();
        if code >= 8000 {
            let message =
                self.lines.iter().filter(|l| l.code >= 8000).map(|l| l.text.trim()).collect::<Vec<_>>().join("; ");
            return Err(BirdcError::Bird { cmd: cmd.to_string(), code, message });
        }
        Ok(self)
    }
}

#[derive(Default)]
struct ReplyParser {
    reply: Reply,
}

impl ReplyParser {
    /// Takes one line; true when it ended the reply.
    fn push(&mut self, line: &str) -> Result<bool, String> {
        let line = line.strip_suffix('\r').unwrap_or(line);
        match classify(line)? {
            Line::Spontaneous => Ok(false),
            Line::More(text) => {
                let code = self.reply.lines.last().map(|l| l.code).ok_or("a continuation line opens the reply")?;
                self.reply.lines.push(ReplyLine { code, text: text.to_string() });
                Ok(false)
            }
            Line::Coded { code, text, last } => {
                self.reply.lines.push(ReplyLine { code, text: text.to_string() });
                Ok(last)
            }
        }
    }
}

/// The outcome of a successful `configure`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ConfigureOutcome {
    /// `0003 Reconfigured`: the new configuration is in force.
    Reconfigured,
    /// `0004 Reconfiguration in progress`: accepted; protocols are still shutting down or
    /// restarting for it.
    InProgress,
    /// `0005`/`0017`: a reconfiguration is running; this one follows it.
    Queued,
}

/// A client of one BIRD's control socket. Each call opens its own connection.
#[derive(Clone, Debug)]
pub struct Birdc {
    socket: PathBuf,
    timeout: Duration,
}

impl Birdc {
    /// A client of the socket at `socket` (BIRD's `-s`), answering within 10 s.
    pub fn new(socket: impl Into<PathBuf>) -> Birdc {
        Birdc { socket: socket.into(), timeout: Duration::from_secs(10) }
    }

    /// The same, waiting at most `timeout` for a whole reply (connect, greeting, reply).
    pub fn with_timeout(self, timeout: Duration) -> Birdc {
        Birdc { timeout, ..self }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Runs one command: its reply, or BIRD's refusal as [`BirdcError::Bird`].
    pub fn raw(&self, cmd: &str) -> Result<Reply, BirdcError> {
        if cmd.is_empty() || cmd.contains(['\n', '\r']) {
            return Err(BirdcError::Command(cmd.to_string()));
        }
        let deadline = Instant::now() + self.timeout;
        let mut conn = self.connect(deadline, cmd)?;
        let greeting = conn.reply(deadline, cmd)?;
        if greeting.code() != 1 || !greeting.text().starts_with("BIRD ") {
            return Err(self.protocol(format!("greeting {:?}", greeting.text())));
        }
        let mut line = cmd.as_bytes().to_vec();
        line.push(b'\n');
        conn.stream.write_all(&line).map_err(|e| self.io_error(e, cmd))?;
        conn.reply(deadline, cmd)?.into_result(cmd)
    }

    /// `configure`: BIRD re-reads the file it was started with (`-c`) and applies what changed
    /// without restarting (sessions whose settings did not change stay up). A file BIRD
    /// refuses is [`BirdcError::Bird`] with BIRD's message (`FILE:LINE:COLUMN what`); BIRD
    /// then keeps running its previous configuration.
    pub fn configure(&self) -> Result<ConfigureOutcome, BirdcError> {
        let reply = self.raw("configure")?;
        match reply.code() {
            3 => Ok(ConfigureOutcome::Reconfigured),
            4 => Ok(ConfigureOutcome::InProgress),
            5 | 17 => Ok(ConfigureOutcome::Queued),
            code => Err(BirdcError::Bird { cmd: "configure".into(), code, message: reply.text() }),
        }
    }

    /// `configure check`: whether the file BIRD was started with would be accepted, without
    /// applying it.
    pub fn configure_check(&self) -> Result<(), BirdcError> {
        let reply = self.raw("configure check")?;
        match reply.code() {
            20 => Ok(()),
            code => Err(BirdcError::Bird { cmd: "configure check".into(), code, message: reply.text() }),
        }
    }

    /// The BGP sessions (`show protocols all`), uptimes computed against this machine's clock.
    pub fn peers(&self) -> Result<Vec<PeerStatus>, BirdcError> {
        let reply = self.raw("show protocols all")?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        Ok(parse_protocols(&reply, now))
    }

    /// `show status`: version, router ID, times of the last start and reconfiguration.
    pub fn status(&self) -> Result<BirdStatus, BirdcError> {
        let reply = self.raw("show status")?;
        parse_status(&reply).ok_or_else(|| self.protocol(format!("`show status` answered {:?}", reply.text())))
    }

    fn connect(&self, deadline: Instant, cmd: &str) -> Result<Conn<'_>, BirdcError> {
        let path = self.socket.clone();
        let stream = UnixStream::connect(&self.socket).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => BirdcError::NotRunning { path },
            io::ErrorKind::ConnectionRefused => BirdcError::Refused { path },
            io::ErrorKind::PermissionDenied => BirdcError::Permission { path },
            _ => self.io_error(e, cmd),
        })?;
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        stream.set_write_timeout(Some(left)).map_err(|e| self.io_error(e, cmd))?;
        Ok(Conn { client: self, stream, buf: Vec::new() })
    }

    fn io_error(&self, e: io::Error, cmd: &str) -> BirdcError {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                BirdcError::Timeout { path: self.socket.clone(), cmd: cmd.into(), secs: self.timeout.as_secs_f64() }
            }
            _ => BirdcError::Io { path: self.socket.clone(), source: e },
        }
    }

    fn protocol(&self, what: String) -> BirdcError {
        BirdcError::Protocol { path: self.socket.clone(), what }
    }
}

struct Conn<'a> {
    client: &'a Birdc,
    stream: UnixStream,
    /// Bytes read and not yet taken as lines.
    buf: Vec<u8>,
}

impl Conn<'_> {
    /// Reads one reply, by `deadline`.
    fn reply(&mut self, deadline: Instant, cmd: &str) -> Result<Reply, BirdcError> {
        let c = self.client;
        let mut parser = ReplyParser::default();
        let mut total = 0usize;
        loop {
            while let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=nl).collect();
                total += line.len();
                let text = String::from_utf8_lossy(&line[..line.len() - 1]);
                if parser.push(&text).map_err(|what| c.protocol(what))? {
                    return Ok(parser.reply);
                }
            }
            if total + self.buf.len() > MAX_REPLY {
                return Err(c.protocol(format!("a reply longer than {MAX_REPLY} bytes")));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(c.io_error(io::ErrorKind::TimedOut.into(), cmd));
            }
            self.stream.set_read_timeout(Some(left)).map_err(|e| c.io_error(e, cmd))?;
            let mut chunk = [0u8; 16384];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(c.protocol("BIRD closed the connection in the middle of a reply".into())),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(c.io_error(e, cmd)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn reply_lines_take_codes_continuations_and_skip_spontaneous_ones() {
        let r = Reply::parse(
            "0002-Reading configuration from /etc/bird.conf\n+ something BIRD printed\n more\n0003 Reconfigured\n",
        )
        .unwrap();
        assert_eq!(r.code(), 3);
        let codes: Vec<u16> = r.lines.iter().map(|l| l.code).collect();
        assert_eq!(codes, [2, 2, 3]);
        assert_eq!(r.text(), "Reading configuration from /etc/bird.conf\nmore\nReconfigured");
    }

    #[test]
    fn reply_parse_rejects_what_is_not_the_protocol() {
        assert!(Reply::parse(" continuation first\n0000 \n").is_err());
        assert!(Reply::parse("hello\n").is_err());
        assert!(Reply::parse("0002-no end\n").is_err());
        assert!(Reply::parse("12x4 bad code\n").is_err());
    }

    #[test]
    fn error_codes_become_errors_with_birds_message() {
        let r = Reply::parse(
            "0002-Reading configuration from /x.conf\n8002 /x.conf:31:10 syntax error, unexpected CF_SYM_UNDEFINED\n",
        )
        .unwrap();
        match r.into_result("configure") {
            Err(BirdcError::Bird { code: 8002, message, .. }) => {
                assert_eq!(message, "/x.conf:31:10 syntax error, unexpected CF_SYM_UNDEFINED")
            }
            other => panic!("{other:?}"),
        }
    }

    fn sock(tag: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("vrouter-bgp-birdc-{tag}-{}.ctl", std::process::id()));
        let _ = std::fs::remove_file(&p);
        p
    }

    /// A stand-in BIRD that greets with `greeting`, reads one command and answers `answer`.
    fn fake(path: &Path, greeting: &'static str, answer: &'static str) -> std::thread::JoinHandle<String> {
        let l = UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            s.write_all(greeting.as_bytes()).unwrap();
            let mut cmd = Vec::new();
            let mut b = [0u8; 1];
            while s.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
                cmd.push(b[0]);
            }
            s.write_all(answer.as_bytes()).unwrap();
            String::from_utf8(cmd).unwrap()
        })
    }

    #[test]
    fn configure_error_carries_birds_message() {
        let p = sock("cfgerr");
        let f = fake(
            &p,
            "0001 BIRD 2.0.12 ready.\n",
            "0002-Reading configuration from /etc/bird/bird.conf\n8002 /etc/bird/bird.conf:12:3 syntax error, unexpected '}'\n",
        );
        let e = Birdc::new(&p).configure().unwrap_err();
        assert_eq!(f.join().unwrap(), "configure");
        let text = e.to_string();
        assert!(text.contains("/etc/bird/bird.conf:12:3 syntax error"), "{text}");
        assert!(matches!(e, BirdcError::Bird { code: 8002, .. }));
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn configure_in_progress_is_accepted() {
        let p = sock("cfgprog");
        let f = fake(
            &p,
            "0001 BIRD 2.0.12 ready.\n",
            "0002-Reading configuration from /b.conf\n0004 Reconfiguration in progress\n",
        );
        assert_eq!(Birdc::new(&p).configure().unwrap(), ConfigureOutcome::InProgress);
        f.join().unwrap();
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn a_silent_socket_times_out() {
        let p = sock("silent");
        let l = UnixListener::bind(&p).unwrap();
        let t = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            std::thread::sleep(Duration::from_millis(600));
            drop(s);
        });
        let started = Instant::now();
        let e = Birdc::new(&p).with_timeout(Duration::from_millis(200)).raw("show status").unwrap_err();
        assert!(matches!(e, BirdcError::Timeout { .. }), "{e:?}");
        assert!(started.elapsed() < Duration::from_millis(550), "{:?}", started.elapsed());
        t.join().unwrap();
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn something_else_on_the_socket_is_a_protocol_error() {
        let p = sock("other");
        let f = fake(&p, "{\"hello\": 1}\n", "");
        let e = Birdc::new(&p).raw("show status").unwrap_err();
        assert!(matches!(e, BirdcError::Protocol { .. }), "{e:?}");
        drop(f);
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn a_missing_socket_says_bird_is_not_running_there() {
        let p = sock("missing");
        let e = Birdc::new(&p).peers().unwrap_err();
        assert!(matches!(e, BirdcError::NotRunning { .. }));
        let text = e.to_string();
        assert!(text.contains(&p.display().to_string()) && text.contains("not running"), "{text}");
    }

    #[test]
    fn multi_line_commands_are_refused_before_sending() {
        assert!(matches!(Birdc::new("/nonexistent").raw("show status\ndown"), Err(BirdcError::Command(_))));
    }
}
