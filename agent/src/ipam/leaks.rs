//! The leak sweep: ENIs eniflow created that are attached nowhere (a crash between create and
//! attach, a detach whose delete failed, a node terminated before DeleteOnTermination was set)
//! are deleted once they are old enough that no agent can still be about to attach them.
//! Only ENIs carrying eniflow's tags, of this cluster when a cluster name is set, are touched.

use std::time::{Duration, SystemTime};

use crate::ec2::{codes, Ec2, Ec2Error};

/// VPC CNI waits 5 minutes too: an agent attaches its new ENI within seconds.
pub const DEFAULT_MIN_AGE: Duration = Duration::from_secs(5 * 60);

/// Deletes leaked ENIs at least `min_age` old; returns the ids deleted.
pub async fn sweep(
    ec2: &Ec2,
    cluster_name: Option<&str>,
    min_age: Duration,
    now: SystemTime,
) -> Result<Vec<String>, Ec2Error> {
    let mut deleted = Vec::new();
    for eni in ec2.detached_enis_of_ours(cluster_name).await? {
        let Some(created) = eni.created_at else {
            continue;
        };
        if now.duration_since(created).unwrap_or_default() < min_age {
            continue;
        }
        match ec2.delete(&eni.id).await {
            Ok(()) => {
                tracing::info!("leak sweep: deleted {}", eni.id);
                deleted.push(eni.id);
            }
            // Another node's sweep, or an attach that won the race: not ours to fight over.
            Err(e) if e.is(codes::NOT_FOUND) || e.is(codes::IN_USE) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(deleted)
}
