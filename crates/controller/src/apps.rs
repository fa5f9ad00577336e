//! An environment's apps on its nodes. A release is one image per app of the project
//! (`lockstep_image::release_id`); each app runs in an agent instance of its own on every node
//! of the environment (`instance_name`: the environment's name for a project with one app).

use lockstep_image::{ImageId, Manifest, release_images};
use lockstep_proto::agent::instance_name;

use crate::{Controller, ControllerError, Environment};

/// One app of a release, and the agent instance that runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AppInstance {
    /// The app's name.
    pub name: String,
    /// The app as instances and routers are keyed: `None` for the one app of a project with
    /// one app.
    pub app: Option<String>,
    pub instance: String,
    pub image: ImageId,
}

impl Controller {
    /// The images of `release`, in app order.
    pub(crate) fn release_manifests(
        &self,
        release: &str,
    ) -> Result<Vec<Manifest>, ControllerError> {
        release_images(release)?
            .iter()
            .map(|id| Ok(self.images.manifest(id)?))
            .collect()
    }

    /// What every image of `release` says of the whole project (routes, services, apps).
    pub(crate) fn release_project(
        &self,
        release: &str,
    ) -> Result<lockstep_config::Project, ControllerError> {
        let first = release_images(release)?
            .into_iter()
            .next()
            .expect("a release has an image");
        Ok(self.images.manifest(&first)?.info.config)
    }

    /// The instances that run `release` of `environment`, in app order.
    pub(crate) fn app_instances(
        &self,
        environment: &str,
        release: &str,
    ) -> Result<Vec<AppInstance>, ControllerError> {
        let manifests = self.release_manifests(release)?;
        let several = manifests.len() > 1;
        Ok(manifests
            .into_iter()
            .map(|manifest| {
                let name = manifest.info.app().name.clone();
                let app = several.then(|| name.clone());
                AppInstance {
                    name,
                    instance: instance_name(environment, app.as_deref()),
                    app,
                    image: manifest.id,
                }
            })
            .collect())
    }

    /// The instance that answers for the environment's services on a node when it runs
    /// `release`: its first app's (the services are the environment's, shared by its apps).
    pub(crate) fn services_instance(
        &self,
        environment: &str,
        release: &str,
    ) -> Result<String, ControllerError> {
        Ok(self.app_instances(environment, release)?.remove(0).instance)
    }

    /// The instances of the release `env` serves (none before its first).
    pub(crate) fn serving_instances(
        &self,
        env: &Environment,
    ) -> Result<Vec<AppInstance>, ControllerError> {
        match &env.serving {
            Some(serving) => self.app_instances(&env.name, &serving.image),
            None => Ok(Vec::new()),
        }
    }

    /// The instance of the serving release that runs the app named `app`, or its first app's.
    pub(crate) fn serving_instance(
        &self,
        env: &Environment,
        app: Option<&str>,
    ) -> Result<AppInstance, ControllerError> {
        let instances = self.serving_instances(env)?;
        let found = match app {
            None => instances.first(),
            Some(app) => instances.iter().find(|instance| instance.name == app),
        };
        match (found, app) {
            (Some(found), _) => Ok(found.clone()),
            (None, None) => Err(ControllerError::NothingDeployed(env.name.clone())),
            (None, Some(app)) => Err(ControllerError::NoSuchApp {
                environment: env.name.clone(),
                app: app.to_owned(),
                apps: instances
                    .iter()
                    .map(|instance| format!("`{}`", instance.name))
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }
}

/// `instances` in the order to open them: each app after the apps its relationships reach
/// (apps in a cycle keep their order). Closing goes the other way round, so that while the
/// environment is open no app calls another that is closed.
pub(crate) fn dependencies_first(
    mut instances: Vec<AppInstance>,
    project: &lockstep_config::Project,
) -> Vec<AppInstance> {
    let reaches = |from: &AppInstance, to: &AppInstance| {
        project.app(&from.name).is_some_and(|app| {
            app.relationships
                .values()
                .any(|relationship| relationship.service == to.name)
        })
    };
    let mut ordered = Vec::with_capacity(instances.len());
    while !instances.is_empty() {
        let ready = instances
            .iter()
            .position(|candidate| {
                !instances
                    .iter()
                    .any(|other| other.name != candidate.name && reaches(candidate, other))
            })
            .unwrap_or(0);
        ordered.push(instances.remove(ready));
    }
    ordered
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A project of apps `front`, `api` and `auth` (in that order), where front calls api and
    /// auth, and api calls auth.
    fn project() -> lockstep_config::Project {
        let app = |name: &str, calls: &str| {
            format!(
                "{name}:\n  type: python:3.11\n  source: {{root: {name}}}\n  relationships: {{{calls}}}\n  web: {{commands: {{start: ./run}}}}\n"
            )
        };
        let applications = app("front", "a: \"api:http\", b: \"auth:http\"")
            + &app("api", "b: \"auth:http\"")
            + &app("auth", "");
        let checked = lockstep_config::check(
            &lockstep_config::Sources {
                applications: Some(applications),
                ..Default::default()
            },
            &lockstep_config::AnyRuntime,
        );
        checked
            .project
            .unwrap_or_else(|| panic!("{:?}", checked.diagnostics))
    }

    fn instance(name: &str) -> AppInstance {
        AppInstance {
            name: name.to_owned(),
            app: Some(name.to_owned()),
            instance: instance_name("main", Some(name)),
            image: "0".repeat(64).parse().unwrap(),
        }
    }

    fn names(instances: &[AppInstance]) -> Vec<&str> {
        instances.iter().map(|i| i.name.as_str()).collect()
    }

    #[test]
    fn apps_open_after_the_apps_they_call() {
        let project = project();
        let in_app_order = vec![instance("front"), instance("api"), instance("auth")];
        assert_eq!(
            names(&dependencies_first(in_app_order, &project)),
            ["auth", "api", "front"]
        );
        // Apps that call nobody keep their order.
        let unrelated = vec![instance("auth"), instance("other")];
        assert_eq!(
            names(&dependencies_first(unrelated, &project)),
            ["auth", "other"]
        );
    }
}
