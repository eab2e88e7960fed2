//! Messages between the page and the inference worker. They travel as JSON strings; an image's
//! bytes travel beside the message as a transferred `Uint8Array`, never inside it.

use pneumoscope::cam::HeatMap;
use pneumoscope::dicom::DicomInfo;
use pneumoscope::preprocess::CropRegion;
use pneumoscope::stage_times::StageTimes;
use pneumoscope::ModelCard;
use serde::{Deserialize, Serialize};

/// Where the page finds the model, relative to its own URL.
pub const CARD_URL: &str = "model.json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToWorker {
    /// Fetch the card and the weights it names, check them and build the classifier.
    Load,
    /// Classify the image whose bytes accompany this message.
    Classify { id: u32 },
    /// The fine heat map of `class` for an image this worker classified.
    FineMap { id: u32, class: usize },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromWorker {
    /// The worker's wasm is running and listening: messages sent before this would be lost.
    Booted,
    /// Bytes of the weights received so far; `total` when the server says.
    LoadProgress {
        loaded: u64,
        total: Option<u64>,
    },
    Ready {
        card: Box<ModelCard>,
        /// Milliseconds per loading step (card, download, SHA-256, model).
        #[serde(default)]
        load_stages: StageTimes,
    },
    LoadFailed {
        message: String,
    },
    Started {
        id: u32,
    },
    Classified {
        id: u32,
        result: Box<ImageResult>,
    },
    Failed {
        id: u32,
        message: String,
    },
    FineMap {
        id: u32,
        map: HeatMap,
    },
    FineMapFailed {
        id: u32,
        class: usize,
        message: String,
    },
}

/// What the page shows for one image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageResult {
    pub width: u32,
    pub height: u32,
    /// Calibrated (temperature-scaled) probabilities, in the card's class order.
    pub probabilities: Vec<f32>,
    pub top: usize,
    /// The part of the image the network saw, where the maps belong.
    pub crop: CropRegion,
    /// The out-of-distribution gate's verdict, when the model has a gate.
    pub in_distribution: Option<bool>,
    pub ood_score: Option<f32>,
    /// Per class, whether its probability reaches the card's operating point (`None`: no
    /// operating point for that class).
    #[serde(default)]
    pub positive: Vec<Option<bool>>,
    /// Everything the worker did for this image, in milliseconds.
    pub millis: f64,
    /// `millis` per stage: decode, preprocess, the layer groups, maps, gate, preview.
    #[serde(default)]
    pub stages: StageTimes,
    /// How a DICOM file was read (no patient data); `None` for PNG and JPEG.
    #[serde(default)]
    pub dicom: Option<DicomInfo>,
    /// The picture the model saw, as a PNG `data:` URL, for files the browser cannot show
    /// itself (DICOM); `None` when the file's own bytes can be shown.
    #[serde(default)]
    pub preview: Option<String>,
}

impl ImageResult {
    /// Whether the page should withhold the diagnosis and show the out-of-distribution warning.
    pub fn flagged(&self) -> bool {
        self.in_distribution == Some(false)
    }

    /// What the batch table and the CSV say the image is: the top class, or no diagnosis when
    /// the gate flagged it.
    pub fn verdict(&self, classes: &[String]) -> String {
        if self.flagged() {
            "not a chest X-ray of the trained kind".into()
        } else {
            classes.get(self.top).cloned().unwrap_or_default()
        }
    }
}

impl ToWorker {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("worker messages always serialise")
    }
}

impl FromWorker {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("worker messages always serialise")
    }
}
