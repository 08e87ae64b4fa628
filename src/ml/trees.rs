//! The ONNX-ML tree ensembles (`ai.onnx.ml` TreeEnsembleClassifier and
//! TreeEnsembleRegressor), registered with tract as extra ops and written
//! from the operator specification, with the binary conventions onnxruntime
//! follows. tract 0.23 has no regressor, and its classifier labels every row
//! of a binary model with one score column (LightGBM, XGBoost) as the first
//! class; these replace both. Tested against onnxruntime's outputs.

use std::collections::HashMap;
use std::sync::Arc;

use tract_onnx::model::{Onnx, ParsingContext};
use tract_onnx::pb::{NodeProto, TensorProto};
use tract_onnx::pb_helpers::AttrTVecType;
use tract_onnx::tract_hir::internal::*;

/// Most classes or targets an ensemble may have (a file asking for more is refused).
const MAX_OUTPUTS: usize = 4_096;

/// Registers both ops with an ONNX framework (replacing tract's classifier).
pub fn register(onnx: &mut Onnx) {
    onnx.op_register.insert("TreeEnsembleClassifier", classifier);
    onnx.op_register.insert("TreeEnsembleRegressor", regressor);
}

/// How a branch node compares its feature with its value.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Leq,
    Lt,
    Gte,
    Gt,
    Eq,
    Neq,
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Branch { feature: usize, mode: Mode, value: f32, yes: usize, no: usize, nan_yes: bool },
    Leaf { weights: Vec<(usize, f32)> },
}

/// How tree values combine (regressors; classifiers sum).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Aggregate {
    Sum,
    Average,
    Min,
    Max,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Transform {
    None,
    Logistic,
    Softmax,
    SoftmaxZero,
}

/// A parsed ensemble: nodes of every tree, each tree's root, and what its leaves add to.
#[derive(Debug, Clone, PartialEq)]
struct Ensemble {
    nodes: Vec<Node>,
    roots: Vec<usize>,
    /// Classes (classifier) or targets (regressor).
    outputs: usize,
    /// Highest feature index a branch reads.
    max_feature: usize,
    aggregate: Aggregate,
    base: Option<Vec<f32>>,
    transform: Transform,
    /// Classifier: the class labels.
    labels: Option<Vec<i64>>,
    /// Binary classifier whose leaves score only class 0 (one score column).
    single_score: bool,
    /// Every leaf weight is 0 or more (the single score is then a probability).
    positive_weights: bool,
}

fn transform_of(node: &NodeProto) -> TractResult<Transform> {
    match node.get_attr_opt::<&str>("post_transform")?.unwrap_or("NONE") {
        "NONE" => Ok(Transform::None),
        "LOGISTIC" => Ok(Transform::Logistic),
        "SOFTMAX" => Ok(Transform::Softmax),
        "SOFTMAX_ZERO" => Ok(Transform::SoftmaxZero),
        other => bail!("post_transform {other} is not supported"),
    }
}

fn mode_of(text: &str) -> TractResult<Option<Mode>> {
    Ok(Some(match text {
        "BRANCH_LEQ" => Mode::Leq,
        "BRANCH_LT" => Mode::Lt,
        "BRANCH_GTE" => Mode::Gte,
        "BRANCH_GT" => Mode::Gt,
        "BRANCH_EQ" => Mode::Eq,
        "BRANCH_NEQ" => Mode::Neq,
        "LEAF" => return Ok(None),
        other => bail!("node mode {other} is not supported"),
    }))
}

/// A list attribute of exactly `n` items.
fn list<'a, T: AttrTVecType<'a>>(node: &'a NodeProto, name: &str, n: usize) -> TractResult<Vec<T>> {
    let values = node.get_attr_vec::<T>(name)?;
    ensure!(values.len() == n, "attribute {name} has {} items, expected {n}", values.len());
    Ok(values)
}

/// Parses the nodes and leaves; `prefix` is `class` or `target`.
fn parse(node: &NodeProto, prefix: &str, outputs: usize) -> TractResult<Ensemble> {
    ensure!(outputs <= MAX_OUTPUTS, "{outputs} classes or targets: at most {MAX_OUTPUTS} are supported");
    for tensor_form in
        ["nodes_values_as_tensor", "base_values_as_tensor", "class_weights_as_tensor", "target_weights_as_tensor"]
    {
        ensure!(
            node.get_attr_opt::<&TensorProto>(tensor_form)?.is_none(),
            "{tensor_form} (double-precision trees) is not supported: convert with float thresholds"
        );
    }
    let n = node.get_attr_vec::<i64>("nodes_nodeids")?.len();
    ensure!(n > 0, "the ensemble has no nodes");
    let tree_ids = list::<i64>(node, "nodes_treeids", n)?;
    let node_ids = list::<i64>(node, "nodes_nodeids", n)?;
    let features = list::<i64>(node, "nodes_featureids", n)?;
    let modes = list::<&str>(node, "nodes_modes", n)?;
    let values = list::<f32>(node, "nodes_values", n)?;
    let yes = list::<i64>(node, "nodes_truenodeids", n)?;
    let no = list::<i64>(node, "nodes_falsenodeids", n)?;
    let nan_yes = match node.get_attr_opt_vec::<i64>("nodes_missing_value_tracks_true")? {
        Some(v) if v.len() == n => v,
        Some(v) => bail!("attribute nodes_missing_value_tracks_true has {} items, expected {n}", v.len()),
        None => vec![0; n],
    };
    let index: HashMap<(i64, i64), usize> =
        tree_ids.iter().zip(&node_ids).enumerate().map(|(i, (t, n))| ((*t, *n), i)).collect();
    let find = |tree: i64, id: i64| -> TractResult<usize> {
        index.get(&(tree, id)).copied().ok_or_else(|| format_err!("tree {tree} has no node {id}"))
    };
    let mut nodes = Vec::with_capacity(n);
    let mut max_feature = 0;
    for i in 0..n {
        nodes.push(match mode_of(modes[i])? {
            None => Node::Leaf { weights: Vec::new() },
            Some(mode) => {
                ensure!(features[i] >= 0, "node {i} reads feature {}", features[i]);
                max_feature = max_feature.max(features[i] as usize);
                Node::Branch {
                    feature: features[i] as usize,
                    mode,
                    value: values[i],
                    yes: find(tree_ids[i], yes[i])?,
                    no: find(tree_ids[i], no[i])?,
                    nan_yes: nan_yes[i] != 0,
                }
            }
        });
    }
    let leaves = node.get_attr_vec::<i64>(&format!("{prefix}_ids"))?.len();
    let leaf_trees = list::<i64>(node, &format!("{prefix}_treeids"), leaves)?;
    let leaf_nodes = list::<i64>(node, &format!("{prefix}_nodeids"), leaves)?;
    let leaf_ids = list::<i64>(node, &format!("{prefix}_ids"), leaves)?;
    let weights = list::<f32>(node, &format!("{prefix}_weights"), leaves)?;
    for i in 0..leaves {
        ensure!(
            leaf_ids[i] >= 0 && (leaf_ids[i] as usize) < outputs,
            "leaf {i} adds to output {} of {outputs}",
            leaf_ids[i]
        );
        match &mut nodes[find(leaf_trees[i], leaf_nodes[i])?] {
            Node::Leaf { weights: w } => w.push((leaf_ids[i] as usize, weights[i])),
            Node::Branch { .. } => {
                bail!("a weight is attached to branch node {} of tree {}", leaf_nodes[i], leaf_trees[i])
            }
        }
    }
    // Each tree's root: its lowest node id.
    let mut lowest: HashMap<i64, (i64, usize)> = HashMap::new();
    for (i, (tree, id)) in tree_ids.iter().zip(&node_ids).enumerate() {
        let root = lowest.entry(*tree).or_insert((*id, i));
        if *id < root.0 {
            *root = (*id, i);
        }
    }
    let mut roots: Vec<(i64, usize)> = lowest.into_iter().map(|(tree, (_, i))| (tree, i)).collect();
    roots.sort_unstable();
    let roots: Vec<usize> = roots.into_iter().map(|(_, i)| i).collect();
    check_acyclic(&nodes, &roots)?;
    let base = node.get_attr_opt_vec::<f32>("base_values")?;
    Ok(Ensemble {
        nodes,
        roots,
        outputs,
        max_feature,
        aggregate: Aggregate::Sum,
        base,
        transform: transform_of(node)?,
        labels: None,
        single_score: false,
        positive_weights: weights.iter().all(|w| *w >= 0.0),
    })
}

/// Refuses trees whose branches lead back to a node already on the way:
/// every walk from a root must end at a leaf.
fn check_acyclic(nodes: &[Node], roots: &[usize]) -> TractResult<()> {
    // 0: not seen, 1: on the current path, 2: done.
    let mut state = vec![0u8; nodes.len()];
    for root in roots {
        let mut stack = vec![(*root, false)];
        while let Some((at, leaving)) = stack.pop() {
            if leaving {
                state[at] = 2;
                continue;
            }
            match state[at] {
                1 => bail!("a tree's branches form a loop at node {at}"),
                2 => continue,
                _ => {}
            }
            state[at] = 1;
            stack.push((at, true));
            if let Node::Branch { yes, no, .. } = &nodes[at] {
                stack.push((*yes, false));
                stack.push((*no, false));
            }
        }
    }
    Ok(())
}

impl Ensemble {
    /// The leaf a tree sends a row to.
    fn leaf(&self, root: usize, row: &[f32]) -> TractResult<&[(usize, f32)]> {
        let mut at = root;
        for _ in 0..=self.nodes.len() {
            match &self.nodes[at] {
                Node::Leaf { weights } => return Ok(weights),
                Node::Branch { feature, mode, value, yes, no, nan_yes } => {
                    let x = row[*feature];
                    let go = if x.is_nan() {
                        *nan_yes
                    } else {
                        match mode {
                            Mode::Leq => x <= *value,
                            Mode::Lt => x < *value,
                            Mode::Gte => x >= *value,
                            Mode::Gt => x > *value,
                            Mode::Eq => x == *value,
                            Mode::Neq => x != *value,
                        }
                    };
                    at = if go { *yes } else { *no };
                }
            }
        }
        bail!("a tree loops")
    }

    /// The aggregated raw scores of one row (before base values and transform).
    fn raw(&self, row: &[f32]) -> TractResult<Vec<f32>> {
        let mut scores = vec![0f32; self.outputs];
        let extreme = matches!(self.aggregate, Aggregate::Min | Aggregate::Max);
        let mut seen = if extreme { vec![false; self.outputs] } else { Vec::new() };
        let mut tree: Vec<(usize, f32)> = Vec::new();
        for root in &self.roots {
            let weights = self.leaf(*root, row)?;
            if !extreme {
                weights.iter().for_each(|(output, weight)| scores[*output] += weight);
                continue;
            }
            // This tree's value per output (a leaf may name an output twice), then the min or max.
            tree.clear();
            for (output, weight) in weights {
                match tree.iter_mut().find(|(o, _)| o == output) {
                    Some((_, value)) => *value += weight,
                    None => tree.push((*output, *weight)),
                }
            }
            for (output, value) in &tree {
                let score = &mut scores[*output];
                *score = match (self.aggregate, seen[*output]) {
                    (Aggregate::Min, true) => score.min(*value),
                    (Aggregate::Max, true) => score.max(*value),
                    _ => *value,
                };
                seen[*output] = true;
            }
        }
        if self.aggregate == Aggregate::Average {
            scores.iter_mut().for_each(|s| *s /= self.roots.len() as f32);
        }
        Ok(scores)
    }

    fn transform(&self, scores: &mut [f32]) {
        match self.transform {
            Transform::None => {}
            Transform::Logistic => scores.iter_mut().for_each(|s| *s = logistic(*s)),
            Transform::Softmax | Transform::SoftmaxZero => {
                let zero = self.transform == Transform::SoftmaxZero;
                let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let exp: Vec<f32> =
                    scores.iter().map(|s| if zero && s.abs() < 1e-7 { 0.0 } else { (s - max).exp() }).collect();
                let sum: f32 = exp.iter().sum();
                scores.iter_mut().zip(exp).for_each(|(s, e)| *s = if sum > 0.0 { e / sum } else { 0.0 });
            }
        }
    }

    /// A classifier's label and class scores for one row.
    fn classify(&self, row: &[f32]) -> TractResult<(i64, Vec<f32>)> {
        let labels = self.labels.as_deref().unwrap_or_default();
        let mut scores = self.raw(row)?;
        if self.single_score {
            // One score for the positive class (onnxruntime's binary case).
            let score = scores[0] + self.base.as_ref().and_then(|b| b.first().copied()).unwrap_or(0.0);
            let positive = if self.positive_weights { score > 0.5 } else { score > 0.0 };
            let pair = if self.positive_weights {
                vec![1.0 - score, score]
            } else if self.transform == Transform::Logistic {
                vec![logistic(-score), logistic(score)]
            } else {
                vec![-score, score]
            };
            return Ok((labels[usize::from(positive)], pair));
        }
        if let Some(base) = &self.base {
            scores.iter_mut().zip(base).for_each(|(s, b)| *s += b);
        }
        let best = scores.iter().enumerate().fold(0, |best, (i, s)| if *s > scores[best] { i } else { best });
        self.transform(&mut scores);
        Ok((labels[best], scores))
    }

    /// A regressor's targets for one row (one target is never transformed, as in onnxruntime).
    fn regress(&self, row: &[f32]) -> TractResult<Vec<f32>> {
        let mut scores = self.raw(row)?;
        if let Some(base) = &self.base {
            scores.iter_mut().zip(base).for_each(|(s, b)| *s += b);
        }
        if self.outputs > 1 {
            self.transform(&mut scores);
        }
        Ok(scores)
    }
}

fn logistic(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

fn classifier(_ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    ensure!(
        node.get_attr_opt_vec::<&str>("classlabels_strings")?.is_none(),
        "text class labels are not supported: train with whole-number classes"
    );
    let labels = node.get_attr_vec::<i64>("classlabels_int64s")?;
    ensure!(!labels.is_empty(), "classlabels_int64s is empty");
    let mut ensemble = parse(node, "class", labels.len())?;
    let scored = |class: usize| {
        ensemble.nodes.iter().any(|n| matches!(n, Node::Leaf { weights } if weights.iter().any(|(c, _)| *c == class)))
    };
    ensemble.single_score = labels.len() == 2 && !scored(1);
    if let Some(base) = &ensemble.base {
        ensure!(
            base.len() == labels.len() || (ensemble.single_score && base.len() == 1),
            "base_values has {} values for {} classes",
            base.len(),
            labels.len()
        );
    }
    ensemble.labels = Some(labels);
    Ok((expand(Trees { ensemble: Arc::new(ensemble), classifier: true }), vec![]))
}

fn regressor(_ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let targets = node.get_attr_opt::<i64>("n_targets")?.unwrap_or(1);
    ensure!(targets >= 1, "n_targets is {targets}");
    ensure!(targets as usize <= MAX_OUTPUTS, "n_targets is {targets}: at most {MAX_OUTPUTS} are supported");
    let mut ensemble = parse(node, "target", targets as usize)?;
    if let Some(base) = &ensemble.base {
        ensure!(base.len() == targets as usize, "base_values has {} values for {targets} targets", base.len());
    }
    ensemble.aggregate = match node.get_attr_opt::<&str>("aggregate_function")?.unwrap_or("SUM") {
        "SUM" => Aggregate::Sum,
        "AVERAGE" => Aggregate::Average,
        "MIN" => Aggregate::Min,
        "MAX" => Aggregate::Max,
        other => bail!("aggregate_function {other} is not supported"),
    };
    Ok((expand(Trees { ensemble: Arc::new(ensemble), classifier: false }), vec![]))
}

/// The op in both the inference model (shape rules) and the typed model (evaluation).
#[derive(Debug, Clone)]
struct Trees {
    ensemble: Arc<Ensemble>,
    classifier: bool,
}

impl PartialEq for Trees {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.ensemble, &other.ensemble) && self.classifier == other.classifier
    }
}

impl Eq for Trees {}

impl Expansion for Trees {
    fn name(&self) -> StaticName {
        if self.classifier { "TreeEnsembleClassifier".into() } else { "TreeEnsembleRegressor".into() }
    }

    fn nboutputs(&self) -> TractResult<usize> {
        Ok(if self.classifier { 2 } else { 1 })
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, if self.classifier { 2 } else { 1 })?;
        s.equals(&inputs[0].rank, 2)?;
        let scores = &outputs[outputs.len() - 1];
        s.equals(&scores.datum_type, f32::datum_type())?;
        s.equals(&scores.rank, 2)?;
        s.equals(&scores.shape[0], &inputs[0].shape[0])?;
        s.equals(&scores.shape[1], self.ensemble.outputs.to_dim())?;
        if self.classifier {
            s.equals(&outputs[0].datum_type, i64::datum_type())?;
            s.equals(&outputs[0].rank, 1)?;
            s.equals(&outputs[0].shape[0], &inputs[0].shape[0])?;
        }
        Ok(())
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, self.clone(), inputs)
    }
}

impl Op for Trees {
    fn name(&self) -> StaticName {
        Expansion::name(self)
    }

    op_as_typed_op!();
}

impl EvalOp for Trees {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let input = input.cast_to::<f32>()?;
        let input = input.to_plain_array_view::<f32>()?;
        let shape = input.shape();
        ensure!(shape.len() == 2, "expected rows of features, got shape {shape:?}");
        let (rows, width) = (shape[0], shape[1]);
        ensure!(width > self.ensemble.max_feature, "the trees read feature {} of {width}", self.ensemble.max_feature);
        let outputs = self.ensemble.outputs;
        let mut scores = Vec::with_capacity(rows * outputs);
        let mut labels = Vec::with_capacity(rows);
        for row in input.rows() {
            let row: Vec<f32> = row.iter().copied().collect();
            if self.classifier {
                let (label, s) = self.ensemble.classify(&row)?;
                labels.push(label);
                scores.extend(s);
            } else {
                scores.extend(self.ensemble.regress(&row)?);
            }
        }
        let scores = Tensor::from_shape(&[rows, outputs], &scores)?.into_tvalue();
        Ok(if self.classifier {
            tvec!(Tensor::from_shape(&[rows], &labels)?.into_tvalue(), scores)
        } else {
            tvec!(scores)
        })
    }
}

impl TypedOp for Trees {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        if let Some(width) = inputs[0].shape.as_concrete().and_then(|s| s.get(1).copied()) {
            ensure!(
                width > self.ensemble.max_feature,
                "the trees read feature {} of {width}",
                self.ensemble.max_feature
            );
        }
        let rows = inputs[0].shape[0].clone();
        let scores = f32::fact(&[rows.clone(), self.ensemble.outputs.to_dim()]);
        Ok(if self.classifier { tvec!(i64::fact(&[rows]), scores) } else { tvec!(scores) })
    }

    as_op!();
}
