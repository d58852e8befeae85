//! Who may run steps on the server's own host.
//!
//! A target with the `local` connection runs steps as the process's own OS
//! user, so its steps can read everything the server can: the access-token
//! signing key, the master key, the database files, the configuration. The
//! same holds for a `copy` step with `src` (read on the worker's host
//! whatever the target). An actor with a role is therefore refused such
//! runs unless its role is listed in [`LocalPolicy::allow_roles`] (default:
//! admin only); trusted actors (no role: the local CLI, embedders on the
//! database itself) are not affected. Creating or changing a target whose
//! connection is `local` is refused the same way: it is the same door.

use crate::auth::Role;
use crate::error::{Error, Result};
use crate::model::{Action, Actor, Connection, JobSpec, Target};

/// Which roles may reach the server's host through `local` targets and
/// `copy.src`. Front ends configure it (`local.allow_roles`,
/// `OPSC_LOCAL_ALLOW_ROLES`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalPolicy {
    /// Roles allowed (default: `[Admin]`).
    pub allow_roles: Vec<Role>,
}

impl Default for LocalPolicy {
    fn default() -> Self {
        Self {
            allow_roles: vec![Role::Admin],
        }
    }
}

/// How to enable it deliberately, for error messages.
const HOW: &str = "an administrator can allow it deliberately with the server setting \
    `local.allow_roles` (TOML `[local] allow_roles = [\"admin\", \"operator\"]` or \
    OPSC_LOCAL_ALLOW_ROLES=admin,operator)";

impl LocalPolicy {
    /// The actor's role if it is held to the policy and not allowed.
    fn refused(&self, actor: &Actor) -> Option<Role> {
        actor.role.filter(|r| !self.allow_roles.contains(r))
    }

    /// Refuses a run whose targets include a `local` one, or whose steps
    /// read a file of the server's host (`copy.src`).
    pub fn check_run(&self, actor: &Actor, spec: &JobSpec, targets: &[Target]) -> Result<()> {
        let Some(role) = self.refused(actor) else {
            return Ok(());
        };
        if let Some(t) = targets
            .iter()
            .find(|t| matches!(t.connection, Connection::Local))
        {
            return Err(Error::Forbidden(format!(
                "target '{}' runs steps on the server's own host (connection: local), where they \
                 could read the server's keys and database; the {role} role may not use it ({HOW})",
                t.name
            )));
        }
        for (i, step) in spec.steps.iter().enumerate() {
            if let Action::Copy { src: Some(src), .. } = &step.action {
                return Err(Error::Forbidden(format!(
                    "steps[{i}].copy.src reads '{src}' on the server's own host, where it could \
                     read the server's keys and database; the {role} role may not use it ({HOW}); \
                     use `content` instead"
                )));
            }
        }
        Ok(())
    }

    /// True if a run of `spec` on `targets` reaches the server's host.
    pub fn reaches_host(&self, spec: &JobSpec, targets: &[Target]) -> bool {
        targets
            .iter()
            .any(|t| matches!(t.connection, Connection::Local))
            || spec
                .steps
                .iter()
                .any(|s| matches!(&s.action, Action::Copy { src: Some(_), .. }))
    }

    /// Refuses a run (by anyone) on the server's host of a job version
    /// written by a user whose role may not reach it.
    pub fn check_author(&self, job: &str, version: u32, author: &str, role: Role) -> Result<()> {
        if self.allow_roles.contains(&role) {
            return Ok(());
        }
        Err(Error::Forbidden(format!(
            "job '{job}' version {version} was written by '{author}' ({role}), a role that may not \
             run steps on the server's own host; an admin must review it and store a new version \
             (with a change: an unchanged spec is not a new version) before it runs there ({HOW})"
        )))
    }

    /// Refuses creating a `local` target, or changing one that is `local` now.
    pub fn check_target(
        &self,
        actor: &Actor,
        new: &Target,
        existing: Option<&Target>,
    ) -> Result<()> {
        let Some(role) = self.refused(actor) else {
            return Ok(());
        };
        let is_local = |t: &Target| matches!(t.connection, Connection::Local);
        if is_local(new) || existing.is_some_and(is_local) {
            return Err(Error::Forbidden(format!(
                "target '{}' has the local connection (steps on the server's own host, where they \
                 could read the server's keys and database); the {role} role may not create or \
                 change it ({HOW})",
                new.name
            )));
        }
        Ok(())
    }
}
