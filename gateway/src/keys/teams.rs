//! Teams: a tenant, a model allowlist and limits that every key of the
//! team shares. A team's change reaches every cached key (each carries its
//! team's fields), so it clears the whole cache, here and on the other
//! instances.

use super::records::{self, TeamChanges, TeamRecord};
use super::{invalidate, KeysError, VirtualKeys, DEFAULT_TENANT};
use crate::util::unix_now_ms;

impl VirtualKeys {
    pub async fn create_team(&self, changes: &TeamChanges) -> Result<TeamRecord, KeysError> {
        let id = changes
            .id
            .clone()
            .filter(|id| valid_team_id(id))
            .ok_or_else(|| KeysError::Invalid {
                field: "id",
                message: "a team needs an `id` of 1 to 64 letters, digits, `-`, `_` or `.`".into(),
            })?;
        let now = unix_now_ms();
        let mut team = TeamRecord {
            id: id.clone(),
            tenant: DEFAULT_TENANT.into(),
            allowed_models: None,
            rpm: None,
            tpm: None,
            max_parallel: None,
            created_at: now,
            updated_at: now,
        };
        changes.apply(&mut team)?;
        if !records::insert_team(&self.store, &team).await? {
            return Err(KeysError::TeamExists(id));
        }
        Ok(team)
    }

    pub async fn get_team(&self, id: &str) -> Result<TeamRecord, KeysError> {
        records::get_team(&self.store, id)
            .await?
            .ok_or_else(|| KeysError::NoTeam(id.into()))
    }

    pub async fn list_teams(&self) -> Result<Vec<TeamRecord>, KeysError> {
        records::list_teams(&self.store).await
    }

    pub async fn update_team(
        &self,
        id: &str,
        changes: &TeamChanges,
    ) -> Result<TeamRecord, KeysError> {
        if changes.id.as_deref().is_some_and(|new| new != id) {
            return Err(KeysError::Invalid {
                field: "id",
                message: "a team's id cannot change; create a new team and move its keys".into(),
            });
        }
        let mut team = self.get_team(id).await?;
        changes.apply(&mut team)?;
        team.updated_at = unix_now_ms();
        if !records::update_team(&self.store, &team).await? {
            return Err(KeysError::NoTeam(id.into()));
        }
        // Every key of the team carries its limits and allowlist.
        self.changed(invalidate::EVERYTHING).await;
        Ok(team)
    }

    pub async fn delete_team(&self, id: &str) -> Result<TeamRecord, KeysError> {
        let team = self.get_team(id).await?;
        let keys = records::count_team_keys(&self.store, id).await?;
        if keys > 0 {
            return Err(KeysError::TeamInUse(id.into(), keys));
        }
        records::delete_team(&self.store, id).await?;
        self.changed(invalidate::EVERYTHING).await;
        Ok(team)
    }
}

fn valid_team_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}
