//! How a program gets onto a hook: tcx where the kernel has it, clsact + cls_bpf otherwise
//! (found by trying, not by kernel version), pods' veths on clsact beside a policy agent
//! (below); and re-adoption of what an earlier agent attached, so a restart never attaches
//! twice.

use std::{fmt, io, str::FromStr};

use aya::programs::{
    links::{FdLink, LinkError, PinnedLink},
    tc::{self as aya_tc, NlOptions, TcAttachOptions, TcHandle},
    LinkOrder, SchedClassifier,
};
use eniflow_common::{Attachment, ATTACH_FLAG_CREATED_CLSACT, ATTACH_MODE_CLSACT, ATTACH_MODE_TCX};

use super::{tc, Datapath, DatapathError, Hook};

/// cls_bpf priority and handle of eniflow's filters: fixed, so a restarted agent and uninstall
/// find exactly their own filter among other tools' filters on the same hook. The handle is not
/// 1: EKS's network policy agent removes its filter from a pod's veth by handle 1 whatever the
/// priority, and would take eniflow's where its own is missing.
pub const CLSACT_PRIORITY: u16 = 0x2e4e;
pub const CLSACT_HANDLE: u32 = 0x2e4e;

/// Which tc attachment API to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttachMode {
    /// tcx if the kernel accepts it, else clsact; pods' veths on clsact when a policy agent's
    /// cls_bpf filters share them (`Datapath::put_pod_veths_on_clsact`). Not always: a clsact
    /// qdisc on the veth takes the handle the bandwidth plugin's ingress qdisc needs (its ADD
    /// fails "create ingress qdisc: file exists"), although a cls_bpf filter attaches in 0.1 ms
    /// where a tcx link waits for an RCU grace period (`bpf_mprog_commit`: 15 ms per hook here).
    #[default]
    Auto,
    Tcx,
    Clsact,
}

/// An attach mode other than auto, tcx or clsact.
#[derive(Debug, thiserror::Error)]
#[error("unknown attach mode {0:?} (expected auto, tcx or clsact)")]
pub struct UnknownAttachMode(String);

impl FromStr for AttachMode {
    type Err = UnknownAttachMode;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "tcx" => Ok(Self::Tcx),
            "clsact" => Ok(Self::Clsact),
            other => Err(UnknownAttachMode(other.to_owned())),
        }
    }
}

/// What `ensure` did on a hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// An earlier agent's attachment is still in place and was kept.
    Adopted,
    AttachedTcx,
    AttachedClsact,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::Adopted => "re-adopted the pinned attachment",
            Outcome::AttachedTcx => "attached (tcx link, pinned)",
            Outcome::AttachedClsact => "attached (clsact cls_bpf filter)",
        })
    }
}

/// Makes sure eniflow's program runs on `hook`, exactly once.
pub async fn ensure(dp: &mut Datapath, hook: &Hook) -> Result<Outcome, DatapathError> {
    let inherited_flags = match adopt(dp, hook).await? {
        Adoption::Kept => return Ok(Outcome::Adopted),
        Adoption::Stale { flags } => flags,
    };
    match dp.mode {
        AttachMode::Tcx => attach_tcx(dp, hook),
        AttachMode::Clsact => attach_clsact(dp, hook, inherited_flags).await,
        AttachMode::Auto if hook.on_pod_veth() && dp.pod_veths_on_clsact => {
            attach_clsact(dp, hook, inherited_flags).await
        }
        AttachMode::Auto => match attach_tcx(dp, hook) {
            Ok(outcome) => Ok(outcome),
            Err(tcx) => {
                tracing::info!("{hook}: tcx unavailable ({tcx}); using clsact");
                attach_clsact(dp, hook, inherited_flags).await
            }
        },
    }
}

enum Adoption {
    Kept,
    /// Nothing usable is attached; `flags` carries over what the stale record knew (such as
    /// "eniflow created this clsact qdisc").
    Stale {
        flags: u32,
    },
}

async fn adopt(dp: &mut Datapath, hook: &Hook) -> Result<Adoption, DatapathError> {
    let record = dp.attachments()?.get(&hook.key(), 0).ok();
    let kept = match record.map(|r| r.mode) {
        Some(ATTACH_MODE_TCX) => tcx_link_in_place(dp, hook)?,
        Some(ATTACH_MODE_CLSACT) => {
            let record = record.expect("matched Some");
            own_filter(dp, hook).await?.is_some_and(|f| {
                u32::from(f.priority) == record.priority && f.handle == record.handle
            })
        }
        _ => false,
    };
    if kept {
        return Ok(Adoption::Kept);
    }
    // A link pin without a record (or a record of a link that died with its interface).
    let _ = std::fs::remove_file(dp.pins.link(hook.ifindex, hook.direction));
    let flags = record.map_or(0, |r| r.flags);
    if record.is_some() {
        let _ = dp.attachments()?.remove(&hook.key());
    }
    Ok(Adoption::Stale { flags })
}

/// Whether the pinned tcx link of `hook` still carries a program on that interface's hook.
fn tcx_link_in_place(dp: &Datapath, hook: &Hook) -> Result<bool, DatapathError> {
    let pinned = match PinnedLink::from_pin(dp.pins.link(hook.ifindex, hook.direction)) {
        Ok(pinned) => pinned,
        Err(LinkError::SyscallError(e)) if e.io_error.kind() == io::ErrorKind::NotFound => {
            return Ok(false)
        }
        Err(e) => return Err(attach_error(hook, format!("pinned link: {e}"))),
    };
    let link = FdLink::from(pinned);
    let prog_id = link
        .info()
        .map_err(|e| attach_error(hook, format!("pinned link info: {e}")))?
        .program_id();
    let attached = SchedClassifier::query_tcx(&hook.ifname, hook.direction.attach_type())
        .map(|(_, progs)| progs.iter().any(|p| p.id() == prog_id))
        .unwrap_or(false);
    Ok(attached)
}

/// eniflow's cls_bpf filter on `hook`, if there is one.
async fn own_filter(dp: &Datapath, hook: &Hook) -> Result<Option<tc::BpfFilter>, DatapathError> {
    let filters = tc::bpf_filters(&dp.nl, hook.ifindex, hook.direction).await?;
    Ok(filters
        .into_iter()
        .find(|f| f.priority == CLSACT_PRIORITY && f.handle == CLSACT_HANDLE))
}

fn attach_tcx(dp: &mut Datapath, hook: &Hook) -> Result<Outcome, DatapathError> {
    // The record goes in first: a crash after attaching must not leave an unrecorded attachment.
    record(
        dp,
        hook,
        Attachment {
            mode: ATTACH_MODE_TCX,
            ..Default::default()
        },
    )?;
    let path = dp.pins.link(hook.ifindex, hook.direction);
    let result = (|| {
        let program = dp.program(hook.program)?;
        let id = program
            .attach_with_options(
                &hook.ifname,
                hook.direction.attach_type(),
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .map_err(|e| attach_error(hook, format!("tcx: {e}")))?;
        let link = program
            .take_link(id)
            .map_err(|e| attach_error(hook, e.to_string()))?;
        let link: FdLink = link
            .try_into()
            .map_err(|e: LinkError| attach_error(hook, e.to_string()))?;
        // Pinned, the link outlives the agent: forwarding continues across restarts.
        link.pin(&path)
            .map_err(|e| attach_error(hook, format!("pin {}: {e}", path.display())))?;
        Ok(Outcome::AttachedTcx)
    })();
    if result.is_err() {
        let _ = dp.attachments()?.remove(&hook.key());
    }
    result
}

async fn attach_clsact(
    dp: &mut Datapath,
    hook: &Hook,
    inherited_flags: u32,
) -> Result<Outcome, DatapathError> {
    if let Some(filter) = own_filter(dp, hook).await? {
        if filter.name != hook.program {
            return Err(attach_error(
                hook,
                format!(
                    "cls_bpf priority {CLSACT_PRIORITY:#x} handle {CLSACT_HANDLE} is taken by program {:?}, not eniflow's",
                    filter.name
                ),
            ));
        }
        // Our own unrecorded filter (a crash between attach and record): replace it.
        tc::delete_filter(
            &dp.nl,
            hook.ifindex,
            hook.direction,
            CLSACT_PRIORITY,
            CLSACT_HANDLE,
        )
        .await?;
    }
    // The record goes in first, claiming no qdisc: a crash before the claim below leaves at
    // worst an empty clsact qdisc that uninstall keeps, never one of another tool's removed.
    let mut attachment = Attachment {
        mode: ATTACH_MODE_CLSACT,
        flags: inherited_flags & ATTACH_FLAG_CREATED_CLSACT,
        priority: u32::from(CLSACT_PRIORITY),
        handle: CLSACT_HANDLE,
    };
    record(dp, hook, attachment)?;
    // Tried rather than looked up: the kernel lists qdiscs of every interface for the lookup, a
    // cost that grew with the pods on the node (an ADD's attach took 0.6 ms with none and 2.8 ms
    // with 249).
    let created = match aya_tc::qdisc_add_clsact(&hook.ifname) {
        Ok(()) => true,
        Err(aya_tc::TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => false,
        Err(e) => {
            let _ = dp.attachments()?.remove(&hook.key());
            return Err(attach_error(hook, format!("add clsact qdisc: {e}")));
        }
    };
    if created {
        attachment.flags |= ATTACH_FLAG_CREATED_CLSACT;
        record(dp, hook, attachment)?;
    }
    let result = (|| {
        let program = dp.program(hook.program)?;
        let id = program
            .attach_with_options(
                &hook.ifname,
                hook.direction.attach_type(),
                TcAttachOptions::Netlink(NlOptions {
                    priority: CLSACT_PRIORITY,
                    handle: TcHandle::from(CLSACT_HANDLE),
                    classid: None,
                }),
            )
            .map_err(|e| attach_error(hook, format!("cls_bpf: {e}")))?;
        let link = program
            .take_link(id)
            .map_err(|e| attach_error(hook, e.to_string()))?;
        // The filter must outlive the agent; dropping the link would delete it. It holds no
        // file descriptor, so forgetting it leaks nothing.
        std::mem::forget(link);
        Ok(Outcome::AttachedClsact)
    })();
    if result.is_err() {
        // Unwind: nothing half-attached stays behind.
        if created {
            let _ = tc::delete_clsact(&dp.nl, hook.ifindex).await;
        }
        let _ = dp.attachments()?.remove(&hook.key());
    }
    result
}

fn record(dp: &mut Datapath, hook: &Hook, attachment: Attachment) -> Result<(), DatapathError> {
    dp.attachments()?
        .insert(hook.key(), attachment, 0)
        .map_err(|e| DatapathError::Map(eniflow_common::maps::ATTACHMENTS, e))
}

fn attach_error(hook: &Hook, message: String) -> DatapathError {
    DatapathError::Attach {
        hook: hook.to_string(),
        message,
    }
}
