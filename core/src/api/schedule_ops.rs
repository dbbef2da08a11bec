//! The schedule operations' JSON: `create_schedule`, `list_schedules`, `get_schedule`,
//! `pause_schedule`, `resume_schedule`, `delete_schedule` (docs/scheduling.md).

use std::sync::Arc;

use serde_json::json;

use super::validate::{field_error, Fields};
use crate::engine::{Engine, NewSchedule, SCHEDULE_NAME_MAX};
use crate::error::Result;
use crate::model::schedule::{CatchUp, MAX_CATCH_UP};

/// Longest namespace, template name or version (as in templates).
const IDENT_MAX: usize = 128;
/// Longest cron pattern and time zone name.
const CRON_MAX: usize = 256;

fn name_field(f: &mut Fields) -> Result<String> {
    f.req_string("name", 1, SCHEDULE_NAME_MAX)
}

/// Runs a schedule operation on a request the validator has read (`f`).
pub async fn dispatch(engine: &Arc<Engine>, op: &str, mut f: Fields) -> Result<String> {
    let response = match op {
        "create_schedule" => {
            let name = name_field(&mut f)?;
            let Some(mut template) = f.object("template")? else {
                return Err(field_error(
                    "template",
                    "missing (expected an object {namespace, name, version?})",
                ));
            };
            let namespace = template.req_string("namespace", 1, IDENT_MAX)?;
            let template_name = template.req_string("name", 1, IDENT_MAX)?;
            let version = template.string("version", 1, IDENT_MAX)?;
            template.finish(&["namespace", "name", "version"])?;
            let cron = f.req_string("cron", 1, CRON_MAX)?;
            let timezone = f
                .string("timezone", 1, CRON_MAX)?
                .unwrap_or_else(|| "UTC".into());
            let context = f.payload("context")?;
            let catch_up = match f.object("catch_up")? {
                Some(mut c) => {
                    let policy = c.req_string("policy", 1, 16)?;
                    let limit = c.int("limit", 1, i64::from(MAX_CATCH_UP))?;
                    c.finish(&["policy", "limit"])?;
                    CatchUp::parse(&policy, limit.map(|l| l as u32))?
                }
                None => CatchUp::Skip,
            };
            let paused = f.bool("paused")?.unwrap_or(false);
            f.finish(&[
                "name", "template", "cron", "timezone", "context", "catch_up", "paused",
            ])?;
            let view = engine
                .create_schedule(NewSchedule {
                    name,
                    namespace,
                    template_name,
                    version,
                    cron,
                    timezone,
                    context,
                    catch_up,
                    paused,
                })
                .await?;
            return super::ops::to_string(&json_schedule(&view));
        }
        "list_schedules" => {
            f.finish(&[])?;
            let all = engine.list_schedules().await?;
            return super::ops::to_string(&ListResponse { schedules: &all });
        }
        "get_schedule" | "pause_schedule" | "resume_schedule" => {
            let name = name_field(&mut f)?;
            f.finish(&["name"])?;
            let view = match op {
                "get_schedule" => engine.get_schedule(&name).await?,
                "pause_schedule" => engine.set_schedule_paused(&name, true).await?,
                _ => engine.set_schedule_paused(&name, false).await?,
            };
            return super::ops::to_string(&json_schedule(&view));
        }
        "delete_schedule" => {
            let name = name_field(&mut f)?;
            f.finish(&["name"])?;
            engine.delete_schedule(&name).await?;
            json!({ "name": name, "deleted": true })
        }
        other => {
            return Err(crate::error::Error::internal(format!(
                "operation `{other}` is not a schedule operation"
            )))
        }
    };
    super::ops::to_string(&response)
}

#[derive(serde::Serialize)]
struct ScheduleResponse<'a, T: serde::Serialize> {
    schedule: &'a T,
}

fn json_schedule<T: serde::Serialize>(v: &T) -> ScheduleResponse<'_, T> {
    ScheduleResponse { schedule: v }
}

#[derive(serde::Serialize)]
struct ListResponse<'a, T: serde::Serialize> {
    schedules: &'a [T],
}
