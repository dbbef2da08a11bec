//! `list_templates`: the registry's templates, for operators (`tasker template list`)
//! and for messages that name the versions there are.

use std::sync::Arc;

use super::validate::Fields;
use crate::engine::Engine;
use crate::error::Result;

/// Longest namespace or template name (as in templates).
const IDENT_MAX: usize = 128;

#[derive(serde::Serialize)]
struct TemplatesResponse<'a> {
    templates: &'a [crate::store::TemplateSummary],
}

pub async fn list_templates(engine: &Arc<Engine>, mut f: Fields) -> Result<String> {
    let namespace = f.string("namespace", 1, IDENT_MAX)?;
    let name = f.string("name", 1, IDENT_MAX)?;
    f.finish(&["namespace", "name"])?;
    let templates = engine
        .list_templates(namespace.as_deref(), name.as_deref())
        .await?;
    super::ops::to_string(&TemplatesResponse {
        templates: &templates,
    })
}
