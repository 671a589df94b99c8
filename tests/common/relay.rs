//! A host's link through the test process, for kernels without `sch_netem`: the host's
//! `eth0` and its port on the switch are TAP devices, and two threads per direction carry
//! each Ethernet frame from one to the other, dropping a share of them and holding the
//! rest for a delay (frames keep their order: one delay for all). The impairment can be
//! changed while the link runs ([`Relay::set`]).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::Rng;

use super::hosts::in_ns;

/// Loss (per million frames) and delay, for both directions.
#[derive(Clone, Copy, Debug, Default)]
pub struct Impairment {
    pub loss_per_million: u32,
    pub delay: Duration,
}

/// Counters of what the relay did.
#[derive(Default, Debug)]
pub struct RelayCounts {
    pub carried: AtomicU64,
    pub dropped: AtomicU64,
}

pub struct Relay {
    impairment: Arc<Mutex<Impairment>>,
    pub counts: Arc<RelayCounts>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// Opens the TAP device `dev` of network namespace `ns` (made with `ip tuntap add`).
fn open_tap(ns: &str, dev: &str) -> Result<File, String> {
    let dev = dev.to_string();
    in_ns(ns, move || {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .map_err(|e| format!("open /dev/net/tun: {e}"))?;
        // struct ifreq: the name (16 bytes), then the flags (a short) in the union.
        let mut ifreq = [0u8; 40];
        ifreq[..dev.len()].copy_from_slice(dev.as_bytes());
        let flags = (libc::IFF_TAP | libc::IFF_NO_PI) as u16;
        ifreq[16..18].copy_from_slice(&flags.to_ne_bytes());
        // SAFETY: TUNSETIFF reads and writes a struct ifreq, which `ifreq` is as large as
        // and lives across the call; the descriptor is open.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, ifreq.as_mut_ptr()) };
        if rc < 0 {
            return Err(format!(
                "TUNSETIFF {dev}: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(file)
    })
}

/// Whether `file` has a frame to read within `timeout`.
fn readable(file: &File, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd: file.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, for the length given.
    let rc = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) };
    rc > 0 && pfd.revents & libc::POLLIN != 0
}

impl Relay {
    /// Carries frames between TAP `a_dev` of namespace `a_ns` and `b_dev` of `b_ns`.
    pub fn start(a_ns: &str, a_dev: &str, b_ns: &str, b_dev: &str) -> Result<Relay, String> {
        let a = open_tap(a_ns, a_dev)?;
        let b = open_tap(b_ns, b_dev)?;
        let a2 = a.try_clone().map_err(|e| e.to_string())?;
        let b2 = b.try_clone().map_err(|e| e.to_string())?;
        let mut relay = Relay {
            impairment: Arc::new(Mutex::new(Impairment::default())),
            counts: Arc::new(RelayCounts::default()),
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        };
        relay.direction(a, b2);
        relay.direction(b, a2);
        Ok(relay)
    }

    fn direction(&mut self, mut from: File, mut to: File) {
        let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
        let stop = self.stop.clone();
        let impairment = self.impairment.clone();
        let counts = self.counts.clone();
        self.threads.push(std::thread::spawn(move || {
            let mut rng = rand::rng();
            let mut buf = vec![0u8; 65536];
            while !stop.load(Ordering::Relaxed) {
                if !readable(&from, Duration::from_millis(50)) {
                    continue;
                }
                let Ok(len) = from.read(&mut buf) else { break };
                let now = *impairment.lock();
                if rng.random_range(0..1_000_000) < now.loss_per_million {
                    counts.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                if tx
                    .send((Instant::now() + now.delay, buf[..len].to_vec()))
                    .is_err()
                {
                    break;
                }
            }
        }));
        let stop = self.stop.clone();
        let counts = self.counts.clone();
        self.threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let (due, frame) = match rx.recv_timeout(Duration::from_millis(50)) {
                    Ok(got) => got,
                    Err(mpsc::RecvTimeoutError::Timeout) => continue,
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                };
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                // A full or downed device drops the frame, as a wire would.
                let _ = to.write(&frame);
                counts.carried.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    /// Changes the loss and delay from now on.
    pub fn set(&self, impairment: Impairment) {
        *self.impairment.lock() = impairment;
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
