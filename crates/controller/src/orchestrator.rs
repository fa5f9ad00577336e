//! Carries out deployments: one queue per environment, the deploy state machine's commands run
//! against the agents, its journal written to the store before anything else happens, and every
//! deployment in flight resumed after a restart.
//!
//! No decision about the procedure is made here; `lockstep_deploy` makes them all. The one
//! procedure outside it is catch-up: bringing a node that missed deployments to the release its
//! environment serves, without any hook, before it may open again.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lockstep_deploy::{
    Command, Deployment, EdgeGate, Event, HookKind, NodeFailure, Outcome, Plan, PlanKind, Record,
    Release, Reply, Request,
};
use lockstep_proto::Generation;
use lockstep_proto::agent::{
    HookRequest, HookState, InstanceStatus, ProcessState, RuntimeInputs, ServiceReplication,
    ServiceRole, Step, SwapRequest,
};
use tokio::sync::mpsc;

use crate::agents::{Call, CallError};
use crate::apps::{AppInstance, dependencies_first};
use crate::data::{DataCopy, DataSource};
use crate::services::{Placed, PromoteOutcome, Reach, placement_lines};
use crate::store::Node;
use crate::{Controller, ControllerError};

/// A deployment waiting for its environment, or running.
#[derive(Debug, Clone)]
pub struct DeployJob {
    pub activity: String,
    pub environment: String,
    pub image: String,
    /// Build this git ref first (with the environment's build variables) and deploy the result
    /// instead of `image`: a build-visible variable changed.
    pub rebuild_from: Option<String>,
    /// Data to put in place of the environment's while it is closed (`data::DataSource`).
    pub data: Option<String>,
}

/// Work on an environment: one at a time, in the order it came, from its activity.
#[derive(Debug, Clone)]
pub enum Job {
    Deploy(DeployJob),
    /// `lockstep backup create`: a backup of what the environment serves.
    Backup {
        activity: String,
        environment: String,
    },
    /// `lockstep env delete`: the environment removed everywhere.
    Delete {
        activity: String,
        environment: String,
    },
}

impl Job {
    pub fn activity(&self) -> &str {
        match self {
            Job::Deploy(job) => &job.activity,
            Job::Backup { activity, .. } | Job::Delete { activity, .. } => activity,
        }
    }

    pub fn environment(&self) -> &str {
        match self {
            Job::Deploy(job) => &job.environment,
            Job::Backup { environment, .. } | Job::Delete { environment, .. } => environment,
        }
    }

    /// Whether `newer`, arriving while this one waits, makes it pointless: only the newest
    /// code matters, but a data replacement, a backup or a deletion was asked for as such.
    fn superseded_by(&self, newer: &Job) -> bool {
        matches!(
            (self, newer),
            (Job::Deploy(older), Job::Deploy(newer)) if older.data.is_none() && newer.data.is_none()
        )
    }
}

impl From<DeployJob> for Job {
    fn from(job: DeployJob) -> Job {
        Job::Deploy(job)
    }
}

/// An environment's queue held by [`Controller::claim_idle`].
pub(crate) struct QueueClaim {
    controller: Arc<Controller>,
    environment: String,
}

impl Drop for QueueClaim {
    fn drop(&mut self) {
        let waiting = self
            .controller
            .queues
            .running
            .lock()
            .expect("queue lock")
            .remove(&self.environment)
            .unwrap_or_default();
        for job in waiting {
            self.controller.enqueue(job);
        }
    }
}

#[derive(Default)]
pub struct Queues {
    /// Environments with work running, and the work waiting behind it, in order.
    running: Mutex<HashMap<String, VecDeque<Job>>>,
    /// One placement of services at a time: a deployment's, a catch-up's or a promotion's,
    /// each from what the store says at that moment.
    placing_services: tokio::sync::Mutex<()>,
    /// Nodes whose catch-up failed, by environment and node: when they are tried again, and
    /// the wait after that one fails too.
    catch_up_retry: Mutex<HashMap<(String, String), (std::time::Instant, Duration)>>,
}

/// The activity type of a catch-up.
const CATCH_UP: &str = "catch-up";

/// The wait before a node whose catch-up failed is tried again, doubled after each failure up
/// to the longest: each try is an activity, and a node that cannot take the release should not
/// fill the feed.
const CATCH_UP_RETRY: (Duration, Duration) = (Duration::from_secs(5), Duration::from_secs(300));

impl Controller {
    /// Queues work on an environment. One runs per environment at a time, in the order they
    /// came; of the deployments that wait, only the newest will run, and the others are recorded
    /// as superseded.
    pub fn enqueue(self: &Arc<Self>, job: impl Into<Job>) {
        let job = job.into();
        let mut running = self.queues.running.lock().expect("queue lock");
        match running.get_mut(job.environment()) {
            Some(waiting) => {
                waiting.retain(|older| {
                    let superseded = older.superseded_by(&job);
                    if superseded {
                        self.supersede(older, &job);
                    }
                    !superseded
                });
                let _ = self.store.append_log(
                    job.activity(),
                    "Waiting for the activity in progress to end",
                );
                waiting.push_back(job);
            }
            None => {
                running.insert(job.environment().to_owned(), VecDeque::new());
                let controller = self.clone();
                tokio::spawn(async move { controller.run_queue(job).await });
            }
        }
    }

    /// Takes work that waits for its environment out of the queue; whether it did.
    pub(crate) fn cancel_waiting(&self, activity: &str) -> bool {
        let mut running = self.queues.running.lock().expect("queue lock");
        running.values_mut().any(|waiting| {
            let before = waiting.len();
            waiting.retain(|job| job.activity() != activity);
            waiting.len() != before
        })
    }

    fn supersede(&self, older: &Job, newer: &Job) {
        let _ = self.store.append_log(
            older.activity(),
            &format!(
                "Superseded by {}, which arrived while this one waited",
                newer.activity()
            ),
        );
        let _ = self
            .store
            .finish_activity(older.activity(), "cancelled", "superseded");
    }

    async fn run_queue(self: Arc<Self>, first: Job) {
        let environment = first.environment().to_owned();
        let mut job = first;
        loop {
            let activity = job.activity().to_owned();
            let done = match job {
                Job::Deploy(job) => self.deploy(&job).await,
                Job::Backup { .. } => self.take_queued_backup(&activity, &environment).await,
                Job::Delete { .. } => self.delete_queued(&activity, &environment).await,
            };
            if let Err(error) = done {
                tracing::error!(%activity, %error, "activity failed to run");
                let _ = self.store.append_log(&activity, &format!("Error: {error}"));
                let _ = self.store.finish_activity(&activity, "complete", "failure");
            }
            let mut running = self.queues.running.lock().expect("queue lock");
            match running.get_mut(&environment).and_then(VecDeque::pop_front) {
                Some(next) => job = next,
                None => {
                    running.remove(&environment);
                    return;
                }
            }
        }
    }

    async fn deploy(&self, job: &DeployJob) -> Result<(), ControllerError> {
        let env = self.store.environment(&job.environment)?;
        let nodes = self.nodes_of(&env)?;
        self.store
            .set_activity_state(&job.activity, "in_progress")?;
        let image = match (&job.rebuild_from, &job.data) {
            (Some(git_ref), _) => self.rebuild(job, git_ref).await?,
            // What serves when it starts: a deployment queued before it may have changed that.
            (None, Some(_)) => {
                let serving = env.serving.clone().or(env.previous.clone());
                let release = serving
                    .ok_or_else(|| ControllerError::NothingDeployed(env.name.clone()))?
                    .image;
                self.store.set_activity_image(&job.activity, &release)?;
                release
            }
            (None, None) => job.image.clone(),
        };
        let instances = self.app_instances(&env.name, &image)?;
        self.configure_instances(&env.name, &nodes, &instances)
            .await?;
        self.ensure_services(&env.name, &image, Some(&job.activity), Reach::EveryNode)
            .await?;
        self.clone_services(&env, &image, &job.activity).await?;
        // Replacing the data redeploys the release that serves: nothing new to rehearse; nor
        // is there anything to protect before an environment's first release.
        if job.data.is_none() && env.serving.is_some() {
            self.rehearse(&env, &image, &job.activity).await?;
        }
        let plan = Plan {
            deployment: job.activity.clone(),
            nodes: nodes.iter().map(|n| n.name.clone()).collect(),
            image,
            generation: self.store.next_generation(&env.name)?,
            previous: env.serving.clone(),
            on_hook_failure: env.settings.on_hook_failure,
            data: job.data.clone(),
            kind: PlanKind::Deployment,
        };
        let (machine, commands) = Deployment::start(plan.clone());
        self.execute(&job.activity, &env.name, &plan, machine, commands)
            .await
            .map(drop)
    }

    /// Resumes every deployment the controller was carrying out when it stopped, from its
    /// journal, and re-queues those that had not begun.
    pub async fn resume_unfinished(self: &Arc<Self>) -> Result<(), ControllerError> {
        for activity in self.store.unfinished_activities()? {
            let journal = self.store.journal(&activity.id)?;
            let (id, environment) = (activity.id.clone(), activity.environment.clone());
            if journal.is_empty() {
                match (activity.kind.as_str(), activity.image.clone()) {
                    ("backup", _) => self.enqueue(Job::Backup {
                        activity: id,
                        environment,
                    }),
                    ("delete", _) => self.enqueue(Job::Delete {
                        activity: id,
                        environment,
                    }),
                    // Catch-up looks at the node again on its own.
                    (CATCH_UP, _) => {
                        self.store.append_log(
                            &activity.id,
                            "The controller stopped before the catch-up began",
                        )?;
                        self.store
                            .finish_activity(&activity.id, "complete", "failure")?;
                    }
                    (_, Some(image)) => self.enqueue(DeployJob {
                        data: self.store.activity_data(&id)?,
                        activity: id,
                        environment,
                        image,
                        rebuild_from: None,
                    }),
                    (_, None) => {
                        self.store.append_log(
                            &activity.id,
                            "The controller stopped before the build ended",
                        )?;
                        self.store
                            .finish_activity(&activity.id, "complete", "failure")?;
                    }
                }
                continue;
            }
            let plan = match journal.first() {
                Some(Record::Started { plan }) => plan.clone(),
                _ => {
                    return Err(ControllerError::Journal(format!(
                        "the journal of {} does not start with its plan",
                        activity.id
                    )));
                }
            };
            let (machine, commands) = Deployment::resume(&journal)
                .map_err(|e| ControllerError::Journal(e.to_string()))?;
            self.store.append_log(
                &activity.id,
                "The controller restarted; resuming from the journal",
            )?;
            // The first of the environment's unfinished activities: it ran when the controller
            // stopped, so nothing holds the queue yet.
            let Some(claim) = self.claim_idle(&activity.environment) else {
                tracing::error!(activity = %activity.id, "another activity of its environment was resumed first");
                continue;
            };
            tokio::spawn(async move {
                let (id, env) = (&activity.id, &activity.environment);
                if let Err(error) = claim
                    .controller
                    .execute(id, env, &plan, machine, commands)
                    .await
                {
                    tracing::error!(activity = %id, %error, "resumed deployment failed to run");
                }
            });
        }
        Ok(())
    }

    /// The state machine's loop: carry out commands, feed back answers, until it finishes;
    /// how it ended.
    async fn execute(
        &self,
        activity: &str,
        environment: &str,
        plan: &Plan,
        mut machine: Deployment,
        mut commands: Vec<Command>,
    ) -> Result<Outcome, ControllerError> {
        let nodes: HashMap<String, Node> = self
            .store
            .nodes(environment)?
            .into_iter()
            .map(|n| (n.name.clone(), n))
            .collect();
        let runtime = self.runtime_inputs(environment, &plan.image)?;
        let in_order = |release: &str| -> Result<Vec<AppInstance>, ControllerError> {
            Ok(dependencies_first(
                self.app_instances(environment, release)?,
                &self.release_project(release)?,
            ))
        };
        let target = in_order(&plan.image)?;
        let previous = match &plan.previous {
            Some(previous) => Some((
                previous.image.clone(),
                previous.generation,
                in_order(&previous.image)?,
            )),
            None => None,
        };
        let data = match plan.data.as_deref() {
            Some(name) => {
                let source = DataSource::parse(name).ok_or_else(|| {
                    ControllerError::Journal(format!("`{name}` names no data to replace with"))
                })?;
                Some(Arc::new(self.data_copy(
                    environment,
                    &plan.image,
                    &source,
                )?))
            }
            None => None,
        };
        let (events, mut inbox) = mpsc::unbounded_channel();
        loop {
            for command in commands.drain(..) {
                match command {
                    Command::Append(record) => {
                        self.store.append_journal(activity, &record)?;
                        self.apply_record(activity, environment, plan, &record)?;
                    }
                    Command::Edge(EdgeGate::Closed) => self.edge_closing(environment).await,
                    Command::Edge(EdgeGate::Open(release)) => {
                        self.edge_opened(environment, &release).await;
                    }
                    Command::Log(line) => self.store.append_log(activity, &line)?,
                    Command::Send {
                        id,
                        node,
                        request,
                        timeout_ms,
                    } => {
                        let Some(node) = nodes.get(&node).cloned() else {
                            let _ = events.send(Event::Reply {
                                id,
                                result: Err(NodeFailure::Failed(format!("unknown node {node}"))),
                            });
                            continue;
                        };
                        let context = SendContext {
                            deployment: activity.to_owned(),
                            generation: plan.generation,
                            runtime: runtime.clone(),
                            target: target.clone(),
                            previous: previous.clone(),
                            target_release: plan.image.clone(),
                            data: data.clone(),
                        };
                        let controller = self.agents.clone();
                        let events = events.clone();
                        tokio::spawn(async move {
                            let timeout = Duration::from_millis(timeout_ms);
                            let answer =
                                send_retrying(&controller, &node, &context, request, timeout).await;
                            let event = match answer {
                                Ok(reply) => Event::Reply {
                                    id,
                                    result: Ok(reply),
                                },
                                Err(CallError::TimedOut) => Event::Timeout { id },
                                Err(CallError::Node(failure)) => Event::Reply {
                                    id,
                                    result: Err(failure),
                                },
                            };
                            let _ = events.send(event);
                        });
                    }
                }
            }
            if let Some(outcome) = machine.outcome() {
                return Ok(outcome.clone());
            }
            let event = inbox.recv().await.expect("the loop holds a sender");
            commands = machine.handle(event);
        }
    }

    fn apply_record(
        &self,
        activity: &str,
        environment: &str,
        plan: &Plan,
        record: &Record,
    ) -> Result<(), ControllerError> {
        // The crash tests' failpoints are at a deployment's phase boundaries, not a catch-up's.
        let failpoints = plan.changes_the_environment();
        match record {
            Record::PhaseStarted { phase } => {
                self.store.phase_started(activity, phase_name(*phase))?;
                if failpoints {
                    failpoint::phase_started(*phase);
                }
            }
            Record::PhaseEnded { phase } => {
                self.store.phase_ended(activity, phase_name(*phase))?;
                if failpoints {
                    failpoint::phase_ended(*phase);
                }
            }
            Record::Serving { release } => self.store.set_serving(environment, release.as_ref())?,
            Record::Finished { outcome } => {
                // The state machine has already logged how it ended, in its own words.
                let result = if outcome.succeeded() {
                    "success"
                } else {
                    "failure"
                };
                self.store.finish_activity(activity, "complete", result)?;
            }
            Record::Started { .. }
            | Record::NodeLost { .. }
            | Record::HookNode { .. }
            | Record::HookOutcome { .. }
            | Record::Failure { .. } => {}
        }
        Ok(())
    }

    /// Environments with work running or waiting.
    pub(crate) fn busy_environments(&self) -> Vec<String> {
        self.queues
            .running
            .lock()
            .expect("queue lock")
            .keys()
            .cloned()
            .collect()
    }

    /// Brings every node of every environment to the release its environment serves, and opens
    /// the ones that may open. Runs at start and then periodically, for nodes that come back.
    pub async fn catch_up(self: &Arc<Self>) -> Result<(), ControllerError> {
        for name in self.store.environments()?.into_iter().map(|env| env.name) {
            // Work under way has the nodes; work that arrives meanwhile waits for this.
            let Some(_claim) = self.claim_idle(&name) else {
                continue;
            };
            let Some(serving) = self.store.environment(&name)?.serving else {
                continue;
            };
            for node in self.store.nodes(&name)? {
                if let Err(error) = self.catch_up_node(&name, &node, &serving).await {
                    tracing::debug!(environment = %name, node = %node.name, %error, "node not caught up yet");
                }
            }
        }
        Ok(())
    }

    /// Holds the queue of environment `name` if nothing runs there, for work outside any
    /// activity: jobs that arrive meanwhile wait, and start once the claim is dropped.
    pub(crate) fn claim_idle(self: &Arc<Self>, name: &str) -> Option<QueueClaim> {
        let mut running = self.queues.running.lock().expect("queue lock");
        if running.contains_key(name) {
            return None;
        }
        running.insert(name.to_owned(), VecDeque::new());
        Some(QueueClaim {
            controller: self.clone(),
            environment: name.to_owned(),
        })
    }

    async fn catch_up_node(
        &self,
        environment: &str,
        node: &Node,
        serving: &Release,
    ) -> Result<(), ControllerError> {
        let instances = self.app_instances(environment, &serving.image)?;
        let mut statuses = Vec::with_capacity(instances.len());
        for instance in &instances {
            let status = match self
                .agents
                .status(&node.agent_url, &instance.instance)
                .await
            {
                Ok(status) => status,
                Err(CallError::Node(NodeFailure::Failed(_))) => {
                    self.configure_instances(
                        environment,
                        std::slice::from_ref(node),
                        std::slice::from_ref(instance),
                    )
                    .await?;
                    // A node that lost its instance lost its services' endpoints too.
                    self.ensure_services(environment, &serving.image, None, Reach::AnsweringNodes)
                        .await?;
                    self.agents
                        .status(&node.agent_url, &instance.instance)
                        .await
                        .map_err(ControllerError::agent(node))?
                }
                Err(error) => return Err(ControllerError::agent(node)(error)),
            };
            statuses.push(status);
        }
        // A node back from a promotion made while it was away still runs the old primary, or
        // follows it: it takes its new part before it serves again.
        if let Some(status) = statuses.first()
            && self.services_misplaced(environment, node, &status.services)?
        {
            tracing::info!(environment, node = %node.name, "services placed again");
            self.ensure_services(environment, &serving.image, None, Reach::AnsweringNodes)
                .await?;
        }
        let open_at_serving = |status: &InstanceStatus| {
            status.gate
                == (lockstep_proto::agent::Gate::Open {
                    generation: serving.generation,
                })
                && !status.background_stopped
        };
        if statuses.iter().all(open_at_serving) {
            return Ok(());
        }
        let retry_key = (environment.to_owned(), node.name.clone());
        let now = std::time::Instant::now();
        let retry = self
            .queues
            .catch_up_retry
            .lock()
            .expect("retry lock")
            .get(&retry_key)
            .copied();
        if retry.is_some_and(|(at, _)| now < at) {
            return Ok(());
        }
        let outcome = self.run_catch_up(environment, node, serving).await?;
        let mut retries = self.queues.catch_up_retry.lock().expect("retry lock");
        if outcome.succeeded() {
            retries.remove(&retry_key);
        } else {
            let (first, longest) = CATCH_UP_RETRY;
            let wait = retry.map_or(first, |(_, wait)| (wait * 2).min(longest));
            retries.insert(retry_key, (std::time::Instant::now() + wait, wait));
        }
        Ok(())
    }

    /// Brings `node` to the release its environment serves, as an activity of its own that the
    /// state machine runs (`PlanKind::CatchUp`).
    async fn run_catch_up(
        &self,
        environment: &str,
        node: &Node,
        serving: &Release,
    ) -> Result<Outcome, ControllerError> {
        let activity = self.store.create_activity(
            CATCH_UP,
            environment,
            &format!(
                "Catch-up of {} to the release {environment} serves",
                node.name
            ),
        )?;
        self.store
            .set_activity_image(&activity.id, &serving.image)?;
        self.store.set_activity_state(&activity.id, "in_progress")?;
        let plan = Plan {
            deployment: activity.id.clone(),
            nodes: vec![node.name.clone()],
            image: serving.image.clone(),
            generation: serving.generation,
            previous: None,
            on_hook_failure: lockstep_deploy::HookFailurePolicy::StayClosed,
            data: None,
            kind: PlanKind::CatchUp,
        };
        tracing::info!(environment, node = %node.name, activity = %activity.id, "catching up");
        let (machine, commands) = Deployment::start(plan.clone());
        self.execute(&activity.id, environment, &plan, machine, commands)
            .await
    }

    /// Sends every node the configuration of each of `instances`, and the users; idempotent.
    pub(crate) async fn configure_instances(
        &self,
        environment: &str,
        nodes: &[Node],
        instances: &[AppInstance],
    ) -> Result<(), ControllerError> {
        let env = self.store.environment(environment)?;
        for node in nodes {
            for instance in instances {
                let app = instance.app.as_deref();
                let config = self.instance_config(&env, node, app);
                let status: lockstep_proto::agent::InstanceStatus = self
                    .agents
                    .call(
                        &node.agent_url,
                        &instance.instance,
                        Call::Configure(&config),
                        Duration::from_secs(30),
                    )
                    .await
                    .map_err(ControllerError::agent(node))?;
                if node.router_of(app) != Some(status.router_port) {
                    self.store
                        .set_router_port(environment, &node.name, app, status.router_port)?;
                }
            }
            self.send_users(env.kind, node, instances).await?;
        }
        Ok(())
    }

    /// Whether `node` runs any of the environment's services otherwise than the store says:
    /// a primary that is no longer the primary, or a replica following an old one.
    fn services_misplaced(
        &self,
        environment: &str,
        node: &Node,
        running: &[lockstep_proto::agent::ServiceStatus],
    ) -> Result<bool, ControllerError> {
        let stored = self.store.services(environment)?;
        let nodes = self.store.nodes(environment)?;
        Ok(running.iter().any(|status| {
            let Some(service) = stored.iter().find(|s| s.name == status.name) else {
                return false;
            };
            let primary_node = service.primary_on(&nodes);
            match &status.role {
                ServiceRole::Primary { .. } => primary_node != Some(node.name.as_str()),
                ServiceRole::Replica { primary, .. } | ServiceRole::Remote { primary } => {
                    primary_node == Some(node.name.as_str())
                        || service
                            .primary_address
                            .as_ref()
                            .is_some_and(|address| address != primary)
                }
            }
        }))
    }

    /// Runs the services `release`'s configuration declares on the nodes of the environment
    /// (before anything of a deployment happens); said in `activity`'s log when given.
    async fn ensure_services(
        &self,
        environment: &str,
        release: &str,
        activity: Option<&str>,
        reach: Reach,
    ) -> Result<Option<Placed>, ControllerError> {
        let declared = &self.release_project(release)?.services;
        let services_instance = &self.services_instance(environment, release)?;
        let _one_at_a_time = self.queues.placing_services.lock().await;
        if declared.is_empty() && self.store.services(environment)?.is_empty() {
            return Ok(None);
        }
        let specs = crate::services::specs(&self.store, environment, declared)?;
        if let Some(activity) = activity {
            self.store.phase_started(activity, "services")?;
        }
        let nodes = self.store.nodes(environment)?;
        let placed = crate::services::place(
            &self.agents,
            services_instance,
            &nodes,
            specs,
            &self.store.services(environment)?,
            reach,
        )
        .await?;
        for (service, address) in &placed.primaries {
            self.store
                .set_service_primary(environment, service, None, Some(address))?;
        }
        if let Some(activity) = activity {
            for line in placement_lines(&placed) {
                self.store.append_log(activity, &line)?;
            }
            self.store.phase_ended(activity, "services")?;
        }
        Ok(Some(placed))
    }

    /// `lockstep service promote`: moves the primary of `service` to a replica, the one that
    /// received the most unless `asked` names one, once its primary is gone (its node does not
    /// answer, or its server does not run). The store records the new primary first, so that
    /// the old one, when its node returns, is made a replica of the new one before it serves.
    pub async fn promote(
        &self,
        environment: &str,
        service: &str,
        asked: Option<&str>,
    ) -> Result<PromoteOutcome, ControllerError> {
        let env = self.store.environment(environment)?;
        let Some(serving) = env.serving else {
            return Err(ControllerError::Promotion(format!(
                "{environment} has not deployed yet: it runs no service"
            )));
        };
        let stored = self.store.services(environment)?;
        let Some(stored) = stored.iter().find(|s| s.name == service) else {
            return Err(ControllerError::Promotion(format!(
                "{environment} has no service {service}; `lockstep status` lists its services"
            )));
        };
        let nodes = self.store.nodes(environment)?;
        let primary_node = stored.primary_on(&nodes).unwrap_or_default().to_owned();
        let services_instance = &self.services_instance(environment, &serving.image)?;
        if nodes.len() < 2 {
            return Err(ControllerError::Promotion(format!(
                "{environment} runs on one node: {service} has no replica to promote"
            )));
        }
        let mut steps = Vec::new();
        let asking = Duration::from_secs(5);
        let node = |name: &str| nodes.iter().find(|n| n.name == name);
        let primary_runs = match node(&primary_node) {
            Some(node) => self
                .agents
                .call::<InstanceStatus>(&node.agent_url, services_instance, Call::Status, asking)
                .await
                .ok()
                .and_then(|status| status.services.into_iter().find(|s| s.name == service))
                .is_some_and(|status| status.process == Some(ProcessState::Running)),
            None => false,
        };
        if primary_runs {
            return Err(ControllerError::Promotion(format!(
                "the primary of {service} runs on {primary_node}: promote replaces a primary that is gone (its node does not answer, or its server does not run)"
            )));
        }
        steps.push(format!(
            "The primary of {service} on {primary_node} is gone"
        ));
        let mut received = Vec::new();
        for node in nodes.iter().filter(|n| n.name != primary_node) {
            let answer = self
                .agents
                .call::<Vec<ServiceReplication>>(
                    &node.agent_url,
                    services_instance,
                    Call::ServiceReplication,
                    asking,
                )
                .await;
            let position = answer
                .ok()
                .and_then(|replicas| replicas.into_iter().find(|r| r.name == service))
                .and_then(|replica| replica.received);
            steps.push(match position {
                Some(position) => format!("Replica on {}: received up to {position}", node.name),
                None => format!("Replica on {}: did not answer", node.name),
            });
            received.push((node.name.clone(), position));
        }
        let chosen = crate::services::choose_promotion(service, &primary_node, &received, asked)?;
        self.store
            .set_service_primary(environment, service, Some(&chosen), None)?;
        let placed = self
            .ensure_services(environment, &serving.image, None, Reach::AnsweringNodes)
            .await?;
        if let Some(placed) = &placed {
            steps.extend(placement_lines(placed));
        }
        Ok(PromoteOutcome {
            service: service.to_owned(),
            from: primary_node,
            to: chosen,
            steps,
        })
    }

    /// Builds an environment's branch again, with its build variables, within the activity.
    async fn rebuild(&self, job: &DeployJob, git_ref: &str) -> Result<String, ControllerError> {
        self.store.phase_started(&job.activity, "build")?;
        let variables = self.variables_for(&job.environment, crate::variables::Audience::Build)?;
        let env = self.store.environment(&job.environment)?;
        let (lines, mut incoming) = mpsc::unbounded_channel::<String>();
        // The build blocks its thread (which its sandbox dies with, so the thread must live as
        // long as the build); its lines reach the activity log as they come.
        let build = async {
            let result = tokio::task::block_in_place(|| {
                self.build_for(&env, git_ref, &[], &variables, &job.activity, &mut |line| {
                    let _ = lines.send(line.to_owned());
                })
            });
            drop(lines);
            result
        };
        let log = async {
            while let Some(line) = incoming.recv().await {
                let _ = self.store.append_log(&job.activity, &line);
            }
        };
        let (result, ()) = tokio::join!(build, log);
        let outcome = result?;
        self.store.phase_ended(&job.activity, "build")?;
        for manifest in &outcome.images {
            self.store.record_image(manifest)?;
        }
        let release = outcome.release();
        self.store.set_activity_image(&job.activity, &release)?;
        Ok(release)
    }

    pub(crate) fn runtime_inputs(
        &self,
        environment: &str,
        image: &str,
    ) -> Result<RuntimeInputs, ControllerError> {
        Ok(RuntimeInputs {
            variables: self.variables_for(environment, crate::variables::Audience::Runtime)?,
            routes: self.platform_routes(environment, image)?,
        })
    }
}

struct SendContext {
    deployment: String,
    generation: Generation,
    runtime: RuntimeInputs,
    /// The instances of the release being deployed.
    target: Vec<AppInstance>,
    /// The release served before, at its generation, with its instances: a rollback swaps
    /// and opens them.
    previous: Option<(String, Generation, Vec<AppInstance>)>,
    target_release: String,
    /// What a data replacement copies, when the plan has one.
    data: Option<Arc<DataCopy>>,
}

impl SendContext {
    fn release(&self, release: &str) -> Result<&[AppInstance], CallError> {
        if release == self.target_release {
            return Ok(&self.target);
        }
        match &self.previous {
            Some((previous, _, instances)) if previous == release => Ok(instances),
            _ => Err(CallError::Node(NodeFailure::Failed(format!(
                "`{release}` is neither the release deployed nor the one served before"
            )))),
        }
    }

    fn at_generation(&self, generation: Generation) -> &[AppInstance] {
        match &self.previous {
            Some((_, previous, instances)) if *previous == generation => instances,
            _ => &self.target,
        }
    }

    /// The instances of both releases: closing must reach whatever serves now, also an app
    /// the new release no longer has.
    fn every_instance(&self) -> Vec<AppInstance> {
        let mut every = self.target.clone();
        if let Some((_, _, previous)) = &self.previous {
            for instance in previous {
                if !every
                    .iter()
                    .any(|known| known.instance == instance.instance)
                {
                    every.push(instance.clone());
                }
            }
        }
        every
    }
}

/// How long an unreachable agent is retried before the state machine hears of it: an agent
/// that restarts takes about a second, and the machine counts every `Unreachable` as a try.
const UNREACHABLE_PATIENCE: Duration = Duration::from_secs(5);

/// `send`, with connection failures retried under a backoff within the request's timeout.
async fn send_retrying(
    agents: &crate::agents::AgentClient,
    node: &Node,
    context: &SendContext,
    request: Request,
    timeout: Duration,
) -> Result<Reply, CallError> {
    let started = tokio::time::Instant::now();
    let patience = UNREACHABLE_PATIENCE.min(timeout);
    let mut pause = Duration::from_millis(100);
    loop {
        match send(agents, node, context, request.clone(), timeout).await {
            Err(CallError::Node(NodeFailure::Unreachable))
                if started.elapsed() + pause < patience =>
            {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            answer => return answer,
        }
    }
}

/// One request of the state machine, carried out on every instance of the node it names that
/// the request concerns (one per app of the release): a node has done a step when all its apps
/// have. Hooks run one app after the other, each app's once (I2 holds per instance); apps
/// open in turn, each after those it calls, and close the other way round.
async fn send(
    agents: &crate::agents::AgentClient,
    node: &Node,
    context: &SendContext,
    request: Request,
    timeout: Duration,
) -> Result<Reply, CallError> {
    let agent = node.agent_url.as_str();
    let step = |generation| Step {
        deployment: context.deployment.clone(),
        generation,
    };
    let done = |_: ()| Reply::Done;
    match request {
        Request::Stage { image } => {
            let instances = context.release(&image)?;
            each(instances, |instance| {
                agents.call::<serde_json::Value>(
                    agent,
                    &instance.instance,
                    Call::Stage(&instance.image),
                    timeout,
                )
            })
            .await
            .map(done)
        }
        Request::Quiesce => {
            let quiesce = step(context.generation);
            each(&context.every_instance(), |instance| {
                agents.call::<serde_json::Value>(
                    agent,
                    &instance.instance,
                    Call::Quiesce(&quiesce),
                    timeout,
                )
            })
            .await
            .map(done)
        }
        Request::Close => {
            let close = step(context.generation);
            let mut dependents_first = context.every_instance();
            dependents_first.reverse();
            in_turn(&dependents_first, |instance| {
                agents.call::<serde_json::Value>(
                    agent,
                    &instance.instance,
                    Call::Close(&close),
                    timeout,
                )
            })
            .await
            .map(done)
        }
        Request::Swap { image, generation } => {
            let instances = context.release(&image)?;
            each(instances, |instance| {
                let swap = SwapRequest {
                    step: step(generation),
                    image: instance.image.clone(),
                    runtime: context.runtime.clone(),
                };
                async move {
                    agents
                        .call::<serde_json::Value>(
                            agent,
                            &instance.instance,
                            Call::Swap(&swap),
                            timeout,
                        )
                        .await
                }
            })
            .await
            .map(done)
        }
        Request::ReplaceData { source } => match &context.data {
            Some(copy) => copy.carry_out(agents).await.map(|()| Reply::Done),
            None => Err(CallError::Node(NodeFailure::Failed(format!(
                "nothing to replace the data with: `{source}` was not prepared"
            )))),
        },
        Request::RunHook { hook } => {
            let request = HookRequest {
                step: step(context.generation),
                hook: match hook {
                    HookKind::Deploy => lockstep_proto::agent::HookKind::Deploy,
                    HookKind::PostDeploy => lockstep_proto::agent::HookKind::PostDeploy,
                },
            };
            let several = context.target.len() > 1;
            let mut output = Vec::new();
            for instance in &context.target {
                let outcome = agents
                    .hook(agent, &instance.instance, &request, timeout)
                    .await?;
                if several {
                    output.push(format!("[{}]", instance.name));
                }
                output.extend(outcome.output);
                if outcome.state != HookState::Succeeded {
                    return Ok(Reply::Hook {
                        succeeded: false,
                        output,
                    });
                }
            }
            Ok(Reply::Hook {
                succeeded: true,
                output,
            })
        }
        Request::Open { generation } => {
            let open = step(generation);
            in_turn(context.at_generation(generation), |instance| {
                agents.call::<serde_json::Value>(
                    agent,
                    &instance.instance,
                    Call::Open(&open),
                    timeout,
                )
            })
            .await
            .map(done)
        }
        Request::StartBackground { generation } => {
            let background = step(generation);
            each(context.at_generation(generation), |instance| {
                agents.call::<serde_json::Value>(
                    agent,
                    &instance.instance,
                    Call::Background(&background),
                    timeout,
                )
            })
            .await
            .map(done)
        }
    }
}

/// Runs `call` on each instance in turn, until one fails.
async fn in_turn<'a, F, Fut>(instances: &'a [AppInstance], mut call: F) -> Result<(), CallError>
where
    F: FnMut(&'a AppInstance) -> Fut,
    Fut: std::future::Future<Output = Result<serde_json::Value, CallError>>,
{
    for instance in instances {
        call(instance).await?;
    }
    Ok(())
}

/// Runs `call` on every instance at once; the first failure is the answer.
async fn each<'a, F, Fut>(instances: &'a [AppInstance], call: F) -> Result<(), CallError>
where
    F: FnMut(&'a AppInstance) -> Fut,
    Fut: std::future::Future<Output = Result<serde_json::Value, CallError>>,
{
    let answers = futures_util::future::join_all(instances.iter().map(call)).await;
    answers.into_iter().try_for_each(|answer| answer.map(drop))
}

pub fn phase_name(phase: lockstep_deploy::Phase) -> &'static str {
    use lockstep_deploy::Phase;
    match phase {
        Phase::Stage => "stage",
        Phase::Quiesce => "quiesce",
        Phase::Close => "close",
        Phase::ReplaceData => "replace_data",
        Phase::Swap => "swap",
        Phase::DeployHook => "deploy_hook",
        Phase::Open => "open",
        Phase::PostDeploy => "post_deploy",
        Phase::Rollback => "rollback",
    }
}

/// Crash points for the tests that kill the controller at a phase boundary (I4), set with
/// `LOCKSTEP_FAILPOINT=after:<phase>` (exit once the phase's end is journaled) or
/// `during:<phase>` (exit half a second after it began). Unset, they do nothing.
mod failpoint {
    use lockstep_deploy::Phase;

    /// The exit status of a failpoint, so a test can tell it from a real failure.
    const EXIT_STATUS: i32 = 86;

    fn armed(kind: &str, phase: Phase) -> bool {
        std::env::var("LOCKSTEP_FAILPOINT")
            .is_ok_and(|point| point == format!("{kind}:{}", super::phase_name(phase)))
    }

    pub fn phase_ended(phase: Phase) {
        if armed("after", phase) {
            tracing::warn!(?phase, "failpoint: exiting after the phase");
            std::process::exit(EXIT_STATUS);
        }
    }

    pub fn phase_started(phase: Phase) {
        if armed("during", phase) {
            std::thread::spawn(|| {
                std::thread::sleep(std::time::Duration::from_millis(500));
                tracing::warn!("failpoint: exiting during a phase");
                std::process::exit(EXIT_STATUS);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A controller on a data folder of its own, with no nodes.
    fn controller(dir: &std::path::Path) -> Arc<Controller> {
        Controller::open(crate::ControllerOptions {
            data_dir: dir.to_owned(),
            project: "test".into(),
            domain: "localhost".into(),
            admin_token: "admin".into(),
            public_url: "http://127.0.0.1:9".into(),
            cluster_url: "https://127.0.0.1:9".into(),
            lockstep_binary: "/bin/false".into(),
            operator: Default::default(),
            shared_storage: Default::default(),
        })
        .unwrap()
    }

    #[tokio::test]
    async fn work_that_arrives_while_a_node_is_caught_up_waits_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let controller = controller(dir.path());
        let claim = controller.claim_idle("production").expect("nothing runs");
        assert!(
            controller.claim_idle("production").is_none(),
            "claimed twice"
        );
        let backup = controller
            .store
            .create_activity("backup", "production", "Backup of production")
            .unwrap();
        controller.enqueue(Job::Backup {
            activity: backup.id.clone(),
            environment: "production".into(),
        });
        assert_eq!(
            controller.store.activity(&backup.id).unwrap().state,
            "pending"
        );
        assert!(
            controller
                .store
                .log(&backup.id)
                .unwrap()
                .contains("Waiting for the activity in progress to end")
        );

        // Once the claim goes, the backup has the queue.
        drop(claim);
        assert!(controller.claim_idle("production").is_none());
        assert_eq!(controller.busy_environments(), ["production"]);
        // The other environments were never held.
        assert!(controller.claim_idle("staging").is_some());
    }
}
