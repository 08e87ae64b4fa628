//! An ONNX model run by tract: read, checked against the width the config
//! declares, optimized for one row of features, and run on the caller's
//! thread. Classifier outputs are told apart by name and type: an integer
//! (or `label`) output is the label, a float output named `prob…` (or the
//! float beside a label) the class probabilities, the first float output
//! the value.

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

use super::MlError;

type Plan = std::sync::Arc<TypedSimplePlan>;

/// A loaded, optimized ONNX model.
#[derive(Debug)]
pub struct OnnxModel {
    plan: Plan,
    input_type: DatumType,
    width: usize,
    value: Option<usize>,
    label: Option<usize>,
    probabilities: Option<usize>,
}

/// Everything one run produced, as numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct Outputs {
    /// The first float output.
    pub value: Option<Vec<f64>>,
    /// The label output.
    pub label: Option<Vec<f64>>,
    /// The class probabilities.
    pub probabilities: Option<Vec<f64>>,
}

fn invalid(error: impl std::fmt::Display) -> MlError {
    MlError::Invalid(error.to_string())
}

impl OnnxModel {
    /// Reads a model from its bytes; it must take one row of `width` floats.
    pub fn from_bytes(bytes: &[u8], width: usize) -> Result<OnnxModel, MlError> {
        if bytes.is_empty() {
            return Err(MlError::Invalid("the file is empty".into()));
        }
        let mut onnx = tract_onnx::onnx();
        super::trees::register(&mut onnx);
        let mut model = onnx.model_for_read(&mut &bytes[..]).map_err(|e| invalid(format!("{e:#}")))?;
        if model.inputs.len() != 1 {
            return Err(MlError::Invalid(format!(
                "the model takes {} inputs; a model here takes one tensor of features",
                model.inputs.len()
            )));
        }
        let fact = model.input_fact(0).map_err(invalid)?.clone();
        let input_type = fact.datum_type.concretize().unwrap_or(DatumType::F32);
        if !matches!(input_type, DatumType::F32 | DatumType::F64) {
            return Err(MlError::Invalid(format!("the model's input is {input_type:?}; expected float features")));
        }
        if let Some(declared) = fact.shape.dims().last().and_then(|d| d.concretize()).and_then(|d| d.to_i64().ok())
            && declared != width as i64
        {
            return Err(MlError::Width { declared: declared as usize, configured: width });
        }
        model
            .set_input_fact(0, InferenceFact::dt_shape(input_type, tvec![1, width]))
            .map_err(|e| invalid(format!("{e:#}")))?;
        let plan = model
            .into_optimized()
            .and_then(|m| m.into_runnable())
            .map_err(|e| invalid(format!("cannot be prepared to run: {e:#}")))?;
        let typed = plan.model();
        let mut outputs = Vec::new();
        for (index, outlet) in typed.output_outlets().map_err(invalid)?.iter().enumerate() {
            let name = typed.outlet_label(*outlet).unwrap_or(&typed.node(outlet.node).name).to_ascii_lowercase();
            let datum = typed.outlet_fact(*outlet).map_err(invalid)?.datum_type;
            outputs.push((index, name, datum));
        }
        let float = |d: &DatumType| d.is_float();
        // tract may type a classifier's label as a symbolic dimension (TDim): a whole number too.
        let whole = |d: &DatumType| d.is_integer() || *d == DatumType::TDim;
        let label = outputs
            .iter()
            .find(|(_, name, d)| name.contains("label") || whole(d))
            .filter(|(_, _, d)| float(d) || whole(d))
            .map(|(i, ..)| *i);
        let probabilities = outputs
            .iter()
            .find(|(_, name, d)| float(d) && name.contains("prob"))
            .or_else(|| label.and_then(|l| outputs.iter().find(|(i, _, d)| *i != l && float(d))))
            .map(|(i, ..)| *i);
        let value = outputs.iter().find(|(_, _, d)| float(d)).map(|(i, ..)| *i);
        if value.is_none() && label.is_none() {
            return Err(MlError::Invalid("the model has no numeric output".into()));
        }
        Ok(OnnxModel { plan, input_type, width, value, label, probabilities })
    }

    /// True when the model has an output of this kind.
    pub fn has(&self, output: crate::config::ModelOutput) -> bool {
        use crate::config::ModelOutput;
        match output {
            ModelOutput::Value => self.value.is_some(),
            ModelOutput::Label => self.label.is_some(),
            ModelOutput::Probabilities => self.probabilities.is_some(),
        }
    }

    /// Runs the model on one row of (already standardized) features.
    pub fn run(&self, features: &[f64]) -> Result<Outputs, MlError> {
        debug_assert_eq!(features.len(), self.width);
        let input = match self.input_type {
            DatumType::F64 => Tensor::from_shape(&[1, self.width], features),
            _ => {
                let row: Vec<f32> = features.iter().map(|f| *f as f32).collect();
                Tensor::from_shape(&[1, self.width], &row)
            }
        }
        .map_err(|e| MlError::Run(format!("{e:#}")))?;
        let outputs = self.plan.run(tvec![input.into()]).map_err(|e| MlError::Run(format!("{e:#}")))?;
        let read = |index: Option<usize>| -> Result<Option<Vec<f64>>, MlError> {
            let Some(index) = index else { return Ok(None) };
            let tensor = outputs.get(index).ok_or_else(|| MlError::Run(format!("output {index} is missing")))?;
            let failed = |e: TractError| MlError::Run(format!("output {index}: {e:#}"));
            let values = if tensor.datum_type() == DatumType::TDim {
                let whole = tensor.cast_to::<i64>().map_err(failed)?;
                whole.to_plain_array_view::<i64>().map_err(failed)?.iter().map(|v| *v as f64).collect()
            } else {
                tensor
                    .cast_to::<f64>()
                    .map_err(failed)?
                    .to_plain_array_view::<f64>()
                    .map_err(failed)?
                    .iter()
                    .copied()
                    .collect()
            };
            Ok(Some(values))
        };
        Ok(Outputs { value: read(self.value)?, label: read(self.label)?, probabilities: read(self.probabilities)? })
    }
}
