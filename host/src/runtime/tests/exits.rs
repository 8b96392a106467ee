//! Exits that arrive without a CRI call: on the agent's event stream, or
//! found by listing after the stream broke.

use std::time::Duration;

use super::*;
use crate::state::ContainerState;

#[tokio::test]
async fn an_oom_kill_is_reported_as_oomkilled() {
    let h = Harness::new().await;
    let pod = h.pod("web").await;
    let id = h.running(&pod, "app").await;
    h.vm(&pod).agent.oom_kill(&id);
    let record = h
        .until_container(&id, "OOM killed", |r| r.state == ContainerState::Exited)
        .await;
    let exit = record.exit.unwrap();
    assert_eq!((exit.exit_code, exit.reason.as_str()), (137, "OOMKilled"));
}

#[tokio::test]
async fn a_clean_exit_is_completed_and_announced_once() {
    let h = Harness::new().await;
    let pod = h.pod("web").await;
    let id = h.running(&pod, "app").await;
    let mut events = h.rt().subscribe();
    h.vm(&pod).agent.exit(&id, 0);
    let record = h
        .until_container(&id, "exited", |r| r.state == ContainerState::Exited)
        .await;
    assert_eq!(record.exit.unwrap().reason, "Completed");
    // StopContainer after the exit finds nothing to do and says nothing.
    h.rt()
        .stop_container(&id, Duration::from_secs(1))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        drain(&mut events),
        vec![(id.clone(), LifecycleKind::Stopped)]
    );
}

#[tokio::test]
async fn exits_during_a_broken_event_stream_are_found_by_listing() {
    let h = Harness::new().await;
    let pod = h.pod("web").await;
    let id = h.running(&pod, "app").await;
    let vm = h.vm(&pod);
    // The agent's connection breaks (its server stops and serves again):
    // the exit happens while nobody follows the stream.
    vm.agent.drop_event_streams();
    vm.agent.exit_silently(&id, 9);
    let record = h
        .until_container(&id, "exited", |r| r.state == ContainerState::Exited)
        .await;
    assert_eq!(record.exit.unwrap().exit_code, 9);
}
