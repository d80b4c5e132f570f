//! The lab fabric's VLAN steering on trunk ENI ports, called by the emulator's fabric
//! (tests/lab/emulator/fabric.py) inside the `vpc` namespace:
//!
//!   eniflow-lab-trunk attach <pins> <port>
//!   eniflow-lab-trunk branch add|del <pins> <port> <vlan> <addr> <branch-mac>
//!
//! Maps and tcx links are pinned under <pins>, so they outlive this process; the fabric removes
//! the directory when it closes.

use std::{net::Ipv4Addr, path::Path, process::ExitCode};

use aya::{
    maps::{HashMap, MapData},
    programs::{
        links::FdLink,
        tc::{TcAttachOptions, TcAttachType},
        LinkOrder, SchedClassifier,
    },
    EbpfLoader,
};
use eniflow_lab_common::{self as lab, Branch, BranchKey, PortMac};

static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("ENIFLOW_LAB_EBPF_EMBED"));

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["attach", pins, port] => attach(Path::new(pins), port),
        ["branch", op @ ("add" | "del"), pins, port, vlan, addr, mac] => {
            branch(*op == "add", Path::new(pins), port, vlan, addr, mac)
        }
        _ => Err("usage: eniflow-lab-trunk attach <pins> <port> | branch add|del <pins> <port> <vlan> <addr> <mac>".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("eniflow-lab-trunk {}: {e}", args.join(" "));
            ExitCode::FAILURE
        }
    }
}

type Result<T> = std::result::Result<T, String>;

fn attach(pins: &Path, port: &str) -> Result<()> {
    std::fs::create_dir_all(pins).map_err(|e| format!("{}: {e}", pins.display()))?;
    let mut loader = EbpfLoader::new();
    let paths = [lab::BRANCH_SOURCES, lab::BRANCH_BY_ADDR].map(|m| (m, pins.join(m)));
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader.load(OBJECT).map_err(|e| e.to_string())?;
    for (name, hook) in [
        (lab::TRUNK_IN, TcAttachType::Ingress),
        (lab::TRUNK_OUT, TcAttachType::Egress),
    ] {
        let program: &mut SchedClassifier = ebpf
            .program_mut(name)
            .ok_or(format!("no program {name}"))?
            .try_into()
            .map_err(|e| format!("{e}"))?;
        program.load().map_err(|e| format!("load {name}: {e}"))?;
        let id = program
            .attach_with_options(port, hook, TcAttachOptions::TcxOrder(LinkOrder::default()))
            .map_err(|e| format!("attach {name} to {port}: {e}"))?;
        let link: FdLink = program
            .take_link(id)
            .map_err(|e| e.to_string())?
            .try_into()
            .map_err(|e| format!("{e}"))?;
        let pin = pins.join(format!("{port}_{name}"));
        // A pin of that name can only be a dead port's (names are never reused while alive).
        let _ = std::fs::remove_file(&pin);
        link.pin(&pin)
            .map_err(|e| format!("pin {}: {e}", pin.display()))?;
    }
    Ok(())
}

fn parse_mac(text: &str) -> Result<[u8; 6]> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| format!("bad MAC {text:?}"))?;
    bytes.try_into().map_err(|_| format!("bad MAC {text:?}"))
}

/// The port's MAC in this network namespace (/sys would show the host's interfaces).
fn port_mac(port: &str) -> Result<[u8; 6]> {
    let name = std::ffi::CString::new(port).map_err(|e| e.to_string())?;
    // SAFETY: an ioctl on a socket this function owns; ifreq is zeroed and its name fits.
    unsafe {
        let mut req: libc::ifreq = std::mem::zeroed();
        let bytes = name.as_bytes_with_nul();
        if bytes.len() > req.ifr_name.len() {
            return Err(format!("interface name {port:?} is too long"));
        }
        for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
            *dst = *src as libc::c_char;
        }
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        let rc = libc::ioctl(fd, libc::SIOCGIFHWADDR, &mut req);
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if rc != 0 {
            return Err(format!("{port}: {err}"));
        }
        let data = req.ifr_ifru.ifru_hwaddr.sa_data;
        Ok(std::array::from_fn(|i| data[i] as u8))
    }
}

fn ifindex(port: &str) -> Result<u32> {
    let name = std::ffi::CString::new(port).map_err(|e| e.to_string())?;
    // SAFETY: a valid NUL-terminated name.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(format!("{port}: {}", std::io::Error::last_os_error())),
        index => Ok(index),
    }
}

fn branch(add: bool, pins: &Path, port: &str, vlan: &str, addr: &str, mac: &str) -> Result<()> {
    let ifindex = ifindex(port)?;
    let vlan: u32 = vlan.parse().map_err(|_| format!("bad VLAN {vlan:?}"))?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| format!("bad address {addr:?}"))?;
    let addr = u32::from_ne_bytes(addr.octets());
    let open = |name: &str| -> Result<aya::maps::Map> {
        let data = MapData::from_pin(pins.join(name)).map_err(|e| format!("{name}: {e}"))?;
        Ok(aya::maps::Map::HashMap(data))
    };
    let mut sources: HashMap<MapData, BranchKey, PortMac> =
        HashMap::try_from(open(lab::BRANCH_SOURCES)?).map_err(|e| e.to_string())?;
    let mut by_addr: HashMap<MapData, u32, Branch> =
        HashMap::try_from(open(lab::BRANCH_BY_ADDR)?).map_err(|e| e.to_string())?;
    let key = BranchKey {
        ifindex,
        vlan,
        addr,
    };
    if add {
        sources
            .insert(
                key,
                PortMac {
                    mac: port_mac(port)?,
                    _pad: [0; 2],
                },
                0,
            )
            .map_err(|e| e.to_string())?;
        by_addr
            .insert(
                addr,
                Branch {
                    vlan,
                    mac: parse_mac(mac)?,
                    _pad: [0; 2],
                },
                0,
            )
            .map_err(|e| e.to_string())?;
    } else {
        let _ = sources.remove(&key);
        let _ = by_addr.remove(&addr);
    }
    Ok(())
}
