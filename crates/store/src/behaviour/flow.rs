//! Step outputs, child-run links and the one-child-per-parent-step rule.

use super::*;

/// Outputs and child run ids round-trip with the result, through the plain
/// and the guarded writes, and a later write replaces them.
pub async fn step_outputs_and_children_round_trip(store: Arc<dyn Store>) -> Result<()> {
    let run = running_run("deploy", "w1", Utc::now() + TimeDelta::minutes(5));
    store.insert_run(&run).await?;
    let child = RunId::new();
    let mut outputs = BTreeMap::new();
    outputs.insert("version".to_string(), json!("1.2.3"));
    outputs.insert("nested".to_string(), json!({"a": [1, "ü", null]}));
    let result = StepResult {
        run_id: run.id,
        step: 0,
        target: "local".into(),
        status: StepStatus::Succeeded,
        exit_code: Some(0),
        signal: None,
        error: None,
        attempt: 1,
        started_at: at(1_000),
        finished_at: Some(at(2_000)),
        try_no: 1,
        tries: vec![],
        outputs: outputs.clone(),
        children: vec![child],
    };
    assert!(store.put_step_result_as("w1", &result).await?);
    let mut second = result.clone();
    second.step = 1;
    store.put_step_result(&second).await?;
    let mut third = result.clone();
    third.step = 2;
    assert!(store.put_step_results_as("w1", &[third.clone()]).await?);
    let back = store.step_results(run.id).await?;
    assert_eq!(
        back,
        vec![result.clone(), second, third],
        "outputs and children must round-trip"
    );
    // Replaced (not merged) by a later write of the same step and target.
    let mut cleared = result.clone();
    cleared.outputs.clear();
    cleared.children.clear();
    assert!(store.put_step_result_as("w1", &cleared).await?);
    let back = store.step_results(run.id).await?;
    assert_eq!(
        back[0], cleared,
        "a later write replaces outputs and children"
    );
    Ok(())
}

/// A child run is found by its parent link, its link round-trips, and a
/// second child for the same parent step and target is a conflict (while
/// another target or step of the same parent may have its own).
pub async fn one_child_run_per_parent_step_and_target(store: Arc<dyn Store>) -> Result<()> {
    let parent = queued_run("release", at(0));
    store.insert_run(&parent).await?;
    let link = |step: u32, target: &str| opsconductor_core::model::RunParent {
        run: parent.id,
        step,
        target: target.into(),
    };
    let mut child = queued_run("deploy", at(1));
    child.parent = Some(link(1, "local"));
    store.insert_run(&child).await?;
    assert_eq!(
        store.get_run(child.id).await?.as_ref(),
        Some(&child),
        "the parent link must round-trip"
    );
    assert_eq!(
        store
            .find_child_run(parent.id, 1, "local")
            .await?
            .map(|r| r.id),
        Some(child.id)
    );
    assert!(store.find_child_run(parent.id, 0, "local").await?.is_none());
    assert!(store.find_child_run(parent.id, 1, "web-1").await?.is_none());
    let mut twin = queued_run("deploy", at(2));
    twin.parent = Some(link(1, "local"));
    match store.insert_run(&twin).await {
        Ok(()) => panic!("a second child for the same parent step and target must be refused"),
        Err(e) => assert_eq!(e.kind(), ErrorKind::Conflict, "{e}"),
    }
    assert!(
        store.get_run(twin.id).await?.is_none(),
        "nothing half-written"
    );
    for l in [link(1, "web-1"), link(2, "local")] {
        let mut other = queued_run("deploy", at(3));
        other.parent = Some(l);
        store.insert_run(&other).await?;
    }
    // Ordinary runs (no parent) never collide with each other.
    for _ in 0..2 {
        store.insert_run(&queued_run("deploy", at(4))).await?;
    }
    Ok(())
}
