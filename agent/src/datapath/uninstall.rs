//! Removes everything eniflow pinned and attached, and nothing else: only the hooks recorded in
//! its `attachments` map, only its own filters, a clsact qdisc only if eniflow created it and it
//! is empty, and only its own pins and directories.

use std::{fs, io, path::Path};

use aya::maps::MapError;
use eniflow_common::{maps, ATTACH_FLAG_CREATED_CLSACT, ATTACH_MODE_CLSACT, ATTACH_MODE_TCX};

use super::{
    attach::{CLSACT_HANDLE, CLSACT_PRIORITY},
    direction_of, pinned_attachments, tc, DatapathError, Direction, Pins,
};

/// What an uninstall could not remove, each named; the rest was removed.
#[derive(Debug, thiserror::Error)]
#[error("uninstall left things behind:\n  {}", .0.join("\n  "))]
pub struct LeftBehind(pub Vec<String>);

/// Detaches and unpins everything eniflow made under `pins`. Keeps going past failures and
/// returns them all.
pub async fn uninstall(pins: &Pins) -> Result<(), LeftBehind> {
    let mut errors = Vec::new();
    if let Err(e) = detach_recorded(pins, &mut errors).await {
        errors.push(e.to_string());
    }
    for dir in [pins.links_dir(), pins.maps_dir()] {
        remove_own_files(&dir, &mut errors);
    }
    for dir in [
        pins.links_dir(),
        pins.maps_dir(),
        pins.versioned(),
        pins.root().to_path_buf(),
    ] {
        match fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            // Not empty: something that is not eniflow's lives there; leave it.
            Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => {
                tracing::warn!(
                    "kept {}: it holds objects eniflow did not create",
                    dir.display()
                );
            }
            Err(e) => errors.push(format!("remove {}: {e}", dir.display())),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(LeftBehind(errors))
    }
}

async fn detach_recorded(pins: &Pins, errors: &mut Vec<String>) -> Result<(), DatapathError> {
    let Some(attachments) = pinned_attachments(pins)? else {
        return Ok(());
    };
    let nl = crate::netlink::connect().map_err(DatapathError::NetlinkSocket)?;
    let mut created_clsact = Vec::new();
    for entry in attachments.iter() {
        let (key, attachment) =
            entry.map_err(|e: MapError| DatapathError::Map(maps::ATTACHMENTS, e))?;
        let Some(direction) = direction_of(&key) else {
            errors.push(format!(
                "attachments: unknown direction {} for ifindex {}",
                key.direction, key.ifindex
            ));
            continue;
        };
        match attachment.mode {
            // Removing the pin drops the last reference to the link, which detaches it.
            ATTACH_MODE_TCX => remove_file(&pins.link(key.ifindex, direction), errors),
            ATTACH_MODE_CLSACT => {
                delete_own_filter(&nl, key.ifindex, direction, errors).await;
                if attachment.flags & ATTACH_FLAG_CREATED_CLSACT != 0 {
                    created_clsact.push(key.ifindex);
                }
            }
            other => errors.push(format!(
                "attachments: unknown mode {other} for ifindex {}",
                key.ifindex
            )),
        }
    }
    created_clsact.sort_unstable();
    created_clsact.dedup();
    for ifindex in created_clsact {
        remove_clsact_if_empty(&nl, ifindex, errors).await;
    }
    Ok(())
}

async fn delete_own_filter(
    nl: &rtnetlink::Handle,
    ifindex: u32,
    direction: Direction,
    errors: &mut Vec<String>,
) {
    let filters = match tc::bpf_filters(nl, ifindex, direction).await {
        Ok(filters) => filters,
        Err(e) if gone(&e) => return,
        Err(e) => {
            return errors.push(format!(
                "ifindex {ifindex} {}: list filters: {e}",
                direction.name()
            ))
        }
    };
    if !filters
        .iter()
        .any(|f| f.priority == CLSACT_PRIORITY && f.handle == CLSACT_HANDLE)
    {
        return;
    }
    if let Err(e) = tc::delete_filter(nl, ifindex, direction, CLSACT_PRIORITY, CLSACT_HANDLE).await
    {
        if !gone(&e) {
            errors.push(format!(
                "ifindex {ifindex} {}: delete filter: {e}",
                direction.name()
            ));
        }
    }
}

/// A clsact qdisc eniflow created goes only once no other tool's filter uses it.
async fn remove_clsact_if_empty(nl: &rtnetlink::Handle, ifindex: u32, errors: &mut Vec<String>) {
    for direction in Direction::BOTH {
        match tc::bpf_filters(nl, ifindex, direction).await {
            Ok(filters) if filters.is_empty() => {}
            Ok(_) => {
                tracing::warn!("kept the clsact qdisc on ifindex {ifindex}: other filters use it");
                return;
            }
            Err(e) if gone(&e) => return,
            Err(e) => return errors.push(format!("ifindex {ifindex}: list filters: {e}")),
        }
    }
    if let Err(e) = tc::delete_clsact(nl, ifindex).await {
        if !gone(&e) {
            errors.push(format!("ifindex {ifindex}: delete clsact qdisc: {e}"));
        }
    }
}

/// The interface or qdisc no longer exists: nothing left to remove.
fn gone(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m)
        if matches!(m.raw_code(), c if c == -libc::ENODEV || c == -libc::ENOENT || c == -libc::EINVAL))
}

/// Removes eniflow's pins in `dir`: link pins by their naming pattern, maps by name.
fn remove_own_files(dir: &Path, errors: &mut Vec<String>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = maps::ALL.contains(&name.as_str())
            || (name.starts_with("if")
                && (name.ends_with("_ingress") || name.ends_with("_egress")));
        if ours {
            remove_file(&entry.path(), errors);
        }
    }
}

fn remove_file(path: &Path, errors: &mut Vec<String>) {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => errors.push(format!("remove {}: {e}", path.display())),
    }
}
