//! The model card panel: what the model is, what it was trained on, how it did, and its limits.

use std::sync::Arc;

use leptos::prelude::*;
use pneumoscope::card::{AveragedModel, Evaluation, GroupEvaluation};
use pneumoscope::{ModelCard, Preprocessing};

/// A hash's first 12 characters, for display (by characters: a card's text is not trusted to be
/// ASCII, and slicing a string by bytes can panic).
fn short_hash(hash: &str) -> String {
    hash.chars().take(12).collect()
}

fn score(value: f64) -> String {
    format!("{value:.3}")
}

/// Where the model holds and where it does not: one row per source collection and age group.
#[component]
fn GroupsView(groups: Vec<GroupEvaluation>) -> impl IntoView {
    let rows = groups
        .iter()
        .map(|group| {
            view! {
                <tr>
                    <td>{group.by.clone()}</td>
                    <td>{group.name.clone()}</td>
                    <td>{group.report.weighted_avg.support}</td>
                    <td>{score(group.report.accuracy)}</td>
                    <td>{group.report.recalls_text()}</td>
                </tr>
            }
        })
        .collect_view();
    view! {
        <table class="groups" data-testid="evaluation-groups">
            <thead>
                <tr>
                    <th>"by"</th>
                    <th>"part"</th>
                    <th>"images"</th>
                    <th>"accuracy"</th>
                    <th>"recall per class (support)"</th>
                </tr>
            </thead>
            <tbody>{rows}</tbody>
        </table>
    }
}

#[component]
fn EvaluationView(evaluation: Evaluation) -> impl IntoView {
    let report = evaluation.report.clone();
    let rows = report
        .labels
        .iter()
        .zip(&report.per_class)
        .map(|(label, scores)| {
            view! {
                <tr>
                    <td>{label.clone()}</td>
                    <td>{score(scores.precision)}</td>
                    <td>{score(scores.recall)}</td>
                    <td>{score(scores.f1)}</td>
                    <td>{scores.support}</td>
                </tr>
            }
        })
        .collect_view();
    let calibration = evaluation.calibration.map(|c| {
        format!(
            "Calibration (T = {:.2}): ECE {:.3} → {:.3}, Brier {:.3} → {:.3} (before → after temperature scaling).",
            c.temperature, c.ece_15_bins_before, c.ece_15_bins_after, c.brier_before, c.brier_after
        )
    });
    let gate = evaluation
        .gate_flagged_rate
        .map(|r| format!("Flagged as out of distribution: {:.1}%.", r * 100.0));
    let operating = evaluation
        .at_operating_points
        .iter()
        .map(|r| view! { <li>{r.describe()}</li> })
        .collect_view();
    let framing = framing_description(evaluation.zoom);
    let groups = (evaluation.groups.len() > 1).then(|| {
        view! {
            <p>"Per source collection and age group:"</p>
            <GroupsView groups=evaluation.groups.clone() />
        }
    });
    view! {
        <div class="evaluation" data-testid="evaluation">
            <h4>{evaluation.name.clone()}</h4>
            {framing.map(|text| view! { <p data-testid="framing-check">{text}</p> })}
            <p>{format!("Accuracy {:.3} on {} images.", report.accuracy, report.weighted_avg.support)}</p>
            <table>
                <thead>
                    <tr>
                        <th></th>
                        <th>"precision"</th>
                        <th>"recall"</th>
                        <th>"f1-score"</th>
                        <th>"support"</th>
                    </tr>
                </thead>
                <tbody>{rows}</tbody>
            </table>
            {groups}
            <ul class="operating-points">{operating}</ul>
            {calibration.map(|text| view! { <p>{text}</p> })}
            {gate.map(|text| view! { <p>{text}</p> })}
        </div>
    }
}

/// What a framing check (an evaluation with `zoom` other than 1) did to the images, and how to
/// read it; `None` for the images as they are.
fn framing_description(zoom: f32) -> Option<String> {
    let how = if zoom < 1.0 {
        format!("every radiograph shrunk to {zoom}x its size in a black margin, as a wider field of view")
    } else if zoom > 1.0 {
        format!("the centre of every radiograph enlarged {zoom}x to fill the frame, as a tighter collimation")
    } else {
        return None;
    };
    Some(format!(
        "Framing check: {how}. Hospitals collimate films their own way; a model that answers by disease, not by how much of the body a film shows, scores here as on the images as they are."
    ))
}

/// What the network is shown, from the card's preprocessing.
fn input_description(preprocessing: &Preprocessing) -> String {
    format!(
        "Input: resized to {} pixels on the shorter side, the centre {c}x{c} crop{}, normalised with mean {:?} and standard deviation {:?}.",
        preprocessing.resize_shorter,
        if preprocessing.equalize {
            ", histogram-equalised"
        } else {
            ""
        },
        preprocessing.mean,
        preprocessing.std,
        c = preprocessing.crop,
    )
}

/// The models a weight average was made of (`trainer average`), if it is one.
fn average_description(models: &[AveragedModel]) -> Option<String> {
    (!models.is_empty()).then(|| {
        let parts = models
            .iter()
            .map(|m| {
                format!(
                    "{:.2} x {} (SHA-256 {})",
                    m.share,
                    m.dtype,
                    short_hash(&m.sha256)
                )
            })
            .collect::<Vec<_>>()
            .join(" + ");
        format!(
            "Weights: the average of {} models fine-tuned from one another: {parts}.",
            models.len()
        )
    })
}

fn narrowing_description(card: &ModelCard) -> Option<String> {
    card.head_narrowed_from.as_ref().map(|from| {
        let dropped: Vec<&str> = from
            .from_classes
            .iter()
            .filter(|c| !card.classes.contains(c))
            .map(String::as_str)
            .collect();
        format!(
            "Trained on {} classes ({}); it answers among {} of them, its outputs for {} left out (SHA-256 of the full model {}).",
            from.from_classes.len(),
            from.from_classes.join(", "),
            card.classes.len(),
            dropped.join(", "),
            short_hash(&from.from_sha256)
        )
    })
}

#[component]
pub fn CardPanel(card: Arc<ModelCard>) -> impl IntoView {
    let training = card.training.as_ref().map(|training| {
        let counts = training
            .data
            .per_class
            .iter()
            .map(|(class, n)| format!("{class} {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let sources = (!training.data.train_per_source.is_empty()).then(|| {
            let list = training
                .data
                .train_per_source
                .iter()
                .map(|(source, n)| format!("{source} {n}"))
                .collect::<Vec<_>>()
                .join(", ");
            view! { <p>{format!("Training images per source collection: {list}.")}</p> }
        });
        view! {
            <p>
                {format!(
                    "Trained on {} images ({counts}) from {}; initialisation: {}; best validation accuracy {:.3} at epoch {} of {}.",
                    training.data.files,
                    training.data.root,
                    training.initialization,
                    training.best_validation_accuracy,
                    training.best_epoch,
                    training.epochs_completed,
                )}
            </p>
            {sources}
            <p class="hash">{format!("Data content SHA-256: {}", training.data.content_sha256)}</p>
        }
    });
    let gate = card.ood_gate.as_ref().map(|gate| {
        format!(
            "Out-of-distribution gate: {} over {} dimensions, threshold {:.1} (accepts {:.0}% of held-out training-kind images).",
            gate.method,
            gate.dims,
            gate.threshold,
            gate.target_true_accept * 100.0
        )
    });
    let checked = card
        .ood_gate
        .as_ref()
        .is_some_and(|gate| !gate.rejection.is_empty());
    let rejection = card
        .ood_gate
        .iter()
        .flat_map(|gate| gate.rejection.iter())
        .map(|r| {
            view! {
                <li>{format!("{}: flags {} of {} ({:.0}%)", r.label(), r.flagged, r.total, r.rate() * 100.0)}</li>
            }
        })
        .collect_view();
    let temperature = card
        .temperature
        .map(|t| format!("Probabilities are calibrated by temperature scaling (T = {t:.2})."));
    let evaluations = card
        .evaluations
        .iter()
        .cloned()
        .map(|evaluation| view! { <EvaluationView evaluation=evaluation /> })
        .collect_view();
    let quantization = card.quantization.as_ref().map(|q| {
        let before = q
            .from_accuracy
            .iter()
            .map(|(name, accuracy)| format!("{name} {accuracy:.3}"))
            .collect::<Vec<_>>()
            .join("; ");
        format!(
            "Weights: {} ({:.1} MB), quantized from the {} model (SHA-256 {}): {}. Its accuracy before quantizing: {before}.",
            card.weights.dtype,
            card.weights.bytes as f64 / 1e6,
            q.from_dtype,
            short_hash(&q.from_sha256),
            q.scheme
        )
    });
    let operating_points = card
        .operating_points
        .iter()
        .map(|p| view! { <li>{p.describe()}</li> })
        .collect_view();
    let has_operating_points = !card.operating_points.is_empty();
    let limitations = card
        .limitations
        .iter()
        .map(|l| view! { <li>{l.clone()}</li> })
        .collect_view();
    view! {
        <details class="card-panel" data-testid="model-card" open=true>
            <summary>"Model card: " {card.name.clone()}</summary>
            <p class="disclaimer">"A research tool, not a diagnostic device."</p>
            <p>{format!("Architecture: {}. Classes: {}.", card.architecture, card.classes.join(", "))}</p>
            <p>{format!("Intended use: {}", card.intended_use)}</p>
            <p data-testid="input">{input_description(&card.preprocessing)}</p>
            {training}
            {average_description(&card.averaged_from).map(|a| view! { <p>{a}</p> })}
            {narrowing_description(&card).map(|n| view! { <p data-testid="narrowed">{n}</p> })}
            {temperature.map(|t| view! { <p>{t}</p> })}
            {gate.map(|g| view! { <p>{g}</p> })}
            {has_operating_points.then(|| view! { <p>"Operating points (each class against the rest; a result shows whether it is at or above its class's threshold):"</p> })}
            <ul class="operating-points" data-testid="operating-points">{operating_points}</ul>
            {checked.then(|| view! { <p>"Checked on images unlike its training data, the gate flags:"</p> })}
            <ul class="gate-rejection">{rejection}</ul>
            <h3>"Evaluation"</h3>
            {evaluations}
            {quantization.map(|q| view! { <p data-testid="quantization">{q}</p> })}
            <h3>"Known limits"</h3>
            <ul>{limitations}</ul>
            <p class="hash">{format!("Weights SHA-256: {}", card.weights.sha256)}</p>
        </details>
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pneumoscope::card::NarrowedHead;

    #[test]
    fn a_narrowed_card_names_the_classes_left_out() {
        let json = include_str!("../../weights/model.json");
        let mut card = ModelCard::from_json(json).unwrap();
        assert_eq!(narrowing_description(&card), None);
        card.head_narrowed_from = Some(NarrowedHead {
            from_classes: [
                "Bacterial Pneumonia",
                "Covid",
                "Normal",
                "Tuberculosis",
                "Viral Pneumonia",
            ]
            .map(String::from)
            .to_vec(),
            from_sha256: "0123456789abcdef".into(),
        });
        let text = narrowing_description(&card).unwrap();
        assert!(text.starts_with("Trained on 5 classes"), "{text}");
        assert!(
            text.contains("answers among 3 of them, its outputs for Bacterial Pneumonia, Tuberculosis left out"),
            "{text}"
        );
        assert!(text.contains("0123456789ab)"), "{text}");
    }

    #[test]
    fn a_framing_check_says_how_the_images_were_reframed() {
        assert_eq!(framing_description(1.0), None);
        let wider = framing_description(0.8).unwrap();
        assert!(
            wider.contains("shrunk to 0.8x its size in a black margin"),
            "{wider}"
        );
        let tighter = framing_description(1.25).unwrap();
        assert!(tighter.contains("enlarged 1.25x"), "{tighter}");
    }
}
