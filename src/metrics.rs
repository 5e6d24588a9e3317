//! Segmentation metrics as the ISPRS 2D Semantic Labeling benchmark reports
//! them: a confusion matrix, per-class F1 and IoU, overall accuracy, mean F1
//! and mIoU, and a leaderboard-style Markdown table.
//!
//! Pure: no GDAL, no candle.
//!
//! # Conventions
//!
//! * The confusion matrix is `k x k`, row = truth, column = prediction,
//!   stored row-major in [`Confusion::counts`].
//! * A truth value `>= k` (ignored boundary pixels, nodata 255) is not
//!   counted at all.
//! * A prediction `>= k` (nodata 255, an id outside the table) for a valid
//!   truth `t` is a miss: it is counted in [`Confusion::missed`]`[t]`, not in
//!   any column. It is a false negative for `t`, a false positive for no
//!   class, and it counts in [`Confusion::total`] as a wrong pixel, so it
//!   lowers the overall accuracy.
//! * A metric whose denominator is zero is `None` (reported as "n/a"), never 0
//!   or NaN: the F1 or IoU of a class that has neither reference nor predicted
//!   pixels, the overall accuracy of an empty matrix.
//! * Means ([`Confusion::mean_f1`], [`Confusion::miou`]) run over the classes
//!   whose value is `Some`; `None` when there is none.

use crate::classes::ClassTable;
use serde::{Deserialize, Serialize};

/// A `k x k` confusion matrix, row = truth, column = prediction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confusion {
    /// Number of classes.
    pub k: usize,
    /// Row-major counts, `counts[truth * k + pred]`, length `k * k`.
    pub counts: Vec<u64>,
    /// Per truth class, the pixels predicted with an id `>= k` (length `k`).
    #[serde(default)]
    pub missed: Vec<u64>,
}

impl Confusion {
    /// An empty matrix for `k` classes.
    pub fn new(k: usize) -> Self {
        Confusion {
            k,
            counts: vec![0; k * k],
            missed: vec![0; k],
        }
    }

    /// The count at (truth, pred).
    pub fn get(&self, truth: usize, pred: usize) -> u64 {
        self.counts[truth * self.k + pred]
    }

    /// Counts one pixel. See the module docs for out-of-range values.
    #[inline]
    pub fn add(&mut self, truth: u8, pred: u8) {
        let (t, p) = (truth as usize, pred as usize);
        if t >= self.k {
            return;
        }
        if p >= self.k {
            self.missed[t] += 1;
        } else {
            self.counts[t * self.k + p] += 1;
        }
    }

    /// Counts pixel pairs. Panics when the slices differ in length.
    pub fn add_slices(&mut self, truth: &[u8], pred: &[u8]) {
        assert_eq!(
            truth.len(),
            pred.len(),
            "truth and prediction differ in length"
        );
        // A 256 x 256 table indexed by (truth, pred) avoids the branches in
        // the hot loop; it is folded into the matrix at the end.
        let mut hist = vec![0u64; 256 * 256];
        for (&t, &p) in truth.iter().zip(pred) {
            hist[((t as usize) << 8) | p as usize] += 1;
        }
        for t in 0..self.k.min(256) {
            let row = &hist[t << 8..(t + 1) << 8];
            for (p, &n) in row.iter().enumerate() {
                if n == 0 {
                    continue;
                }
                if p < self.k {
                    self.counts[t * self.k + p] += n;
                } else {
                    self.missed[t] += n;
                }
            }
        }
    }

    /// Adds another matrix of the same size. Panics when `k` differs.
    pub fn merge(&mut self, other: &Confusion) {
        assert_eq!(
            self.k, other.k,
            "cannot merge confusion matrices of different sizes"
        );
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        if self.missed.len() != self.k {
            self.missed.resize(self.k, 0);
        }
        for (a, b) in self.missed.iter_mut().zip(&other.missed) {
            *a += b;
        }
    }

    /// Number of counted pixels (valid truth), misses included.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum::<u64>() + self.missed.iter().sum::<u64>()
    }

    /// True positives of class `c`.
    pub fn tp(&self, c: usize) -> u64 {
        self.get(c, c)
    }

    /// Reference pixels of class `c` (its row, misses included).
    pub fn truth_count(&self, c: usize) -> u64 {
        let row: u64 = self.counts[c * self.k..(c + 1) * self.k].iter().sum();
        row + self.missed.get(c).copied().unwrap_or(0)
    }

    /// Pixels predicted as class `c` (its column).
    pub fn pred_count(&self, c: usize) -> u64 {
        (0..self.k).map(|t| self.get(t, c)).sum()
    }

    /// Correct pixels over all counted pixels; `None` when nothing was counted.
    pub fn overall_accuracy(&self) -> Option<f64> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        let diag: u64 = (0..self.k).map(|c| self.tp(c)).sum();
        Some(diag as f64 / total as f64)
    }

    /// F1 = 2TP / (2TP + FP + FN) = 2TP / (truth + pred); `None` (n/a) when
    /// class `c` has neither reference nor predicted pixels.
    pub fn f1(&self, c: usize) -> Option<f64> {
        let denom = self.truth_count(c) + self.pred_count(c);
        if denom == 0 {
            return None;
        }
        Some(2.0 * self.tp(c) as f64 / denom as f64)
    }

    /// Precision TP / pred; `None` when nothing was predicted as `c`.
    pub fn precision(&self, c: usize) -> Option<f64> {
        let p = self.pred_count(c);
        (p > 0).then(|| self.tp(c) as f64 / p as f64)
    }

    /// Recall TP / truth; `None` when `c` has no reference pixel.
    pub fn recall(&self, c: usize) -> Option<f64> {
        let t = self.truth_count(c);
        (t > 0).then(|| self.tp(c) as f64 / t as f64)
    }

    /// IoU = TP / (TP + FP + FN); `None` (n/a) when class `c` has neither
    /// reference nor predicted pixels.
    pub fn iou(&self, c: usize) -> Option<f64> {
        let tp = self.tp(c);
        let union = self.truth_count(c) + self.pred_count(c) - tp;
        if union == 0 {
            return None;
        }
        Some(tp as f64 / union as f64)
    }

    /// Mean F1 over `classes`, skipping those whose F1 is n/a.
    pub fn mean_f1(&self, classes: &[usize]) -> Option<f64> {
        mean(classes.iter().filter_map(|&c| self.f1(c)))
    }

    /// Mean IoU over all classes, skipping those whose IoU is n/a.
    pub fn miou(&self) -> Option<f64> {
        mean((0..self.k).filter_map(|c| self.iou(c)))
    }
}

fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (mut sum, mut n) = (0.0, 0usize);
    for v in values {
        sum += v;
        n += 1;
    }
    (n > 0).then(|| sum / n as f64)
}

/// The metrics of one evaluation, as the benchmark reports them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Class names, index = class id = matrix row.
    pub classes: Vec<String>,
    /// Per-class F1, `null` in JSON for n/a.
    pub f1: Vec<Option<f64>>,
    /// Per-class IoU.
    pub iou: Vec<Option<f64>>,
    /// Overall accuracy.
    pub overall_accuracy: Option<f64>,
    /// The classes averaged into `mean_f1` (ISPRS: 0..=4, clutter excluded).
    pub mean_f1_classes: Vec<usize>,
    /// Mean F1 over `mean_f1_classes`.
    pub mean_f1: Option<f64>,
    /// Mean IoU over all classes.
    pub miou: Option<f64>,
    /// Counted pixels.
    pub pixels: u64,
    /// The confusion matrix.
    pub confusion: Confusion,
}

/// The ISPRS leaderboard's column names, by class id.
const ISPRS_SHORT: [&str; 6] = ["imp surf", "building", "low_veg", "tree", "car", "clutter"];

impl Report {
    /// A report over `table`'s classes. The mean F1 runs over every class
    /// whose name is not "clutter" (case-insensitive, also "clutter/background")
    /// — for the ISPRS table, the 5 leaderboard classes.
    pub fn new(confusion: &Confusion, table: &ClassTable) -> Self {
        let classes: Vec<String> = (0..confusion.k)
            .map(|c| {
                table
                    .classes
                    .get(c)
                    .map(|x| x.name.clone())
                    .unwrap_or_else(|| format!("class {c}"))
            })
            .collect();
        let mean_f1_classes: Vec<usize> = (0..confusion.k)
            .filter(|&c| !classes[c].to_ascii_lowercase().starts_with("clutter"))
            .collect();
        Self::with_mean_classes(confusion, classes, mean_f1_classes)
    }

    /// A report with explicit names and mean-F1 classes.
    pub fn with_mean_classes(
        confusion: &Confusion,
        classes: Vec<String>,
        mean_f1_classes: Vec<usize>,
    ) -> Self {
        let k = confusion.k;
        Report {
            f1: (0..k).map(|c| confusion.f1(c)).collect(),
            iou: (0..k).map(|c| confusion.iou(c)).collect(),
            overall_accuracy: confusion.overall_accuracy(),
            mean_f1: confusion.mean_f1(&mean_f1_classes),
            miou: confusion.miou(),
            pixels: confusion.total(),
            mean_f1_classes,
            classes,
            confusion: confusion.clone(),
        }
    }

    /// JSON, pretty-printed.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report always serialises")
    }

    /// Markdown: first the leaderboard table (F1 per class of
    /// `mean_f1_classes`, then overall accuracy, in percent with one decimal,
    /// "n/a" for empty classes), then the summary, per-class F1/IoU of all
    /// classes, and the confusion matrix.
    ///
    /// With the ISPRS table the header is exactly
    /// `| imp surf | building | low_veg | tree | car | Overall |`.
    pub fn to_markdown(&self, table: &ClassTable) -> String {
        let isprs = *table == ClassTable::isprs();
        let short = |c: usize| -> String {
            if isprs && c < ISPRS_SHORT.len() {
                ISPRS_SHORT[c].to_string()
            } else {
                self.classes[c].clone()
            }
        };
        let mut s = String::new();
        // Leaderboard table.
        s.push('|');
        for &c in &self.mean_f1_classes {
            s.push_str(&format!(" {} |", short(c)));
        }
        s.push_str(" Overall |\n|");
        for _ in 0..=self.mean_f1_classes.len() {
            s.push_str("---|");
        }
        s.push_str("\n|");
        for &c in &self.mean_f1_classes {
            s.push_str(&format!(" {} |", pct(self.f1[c])));
        }
        s.push_str(&format!(" {} |\n\n", pct(self.overall_accuracy)));
        // Summary.
        s.push_str(&format!(
            "Mean F1 (without clutter): {}  \nmIoU: {}  \nOverall accuracy: {}  \nPixels: {}\n\n",
            pct(self.mean_f1),
            pct(self.miou),
            pct(self.overall_accuracy),
            self.pixels
        ));
        // Per class.
        s.push_str("| class | F1 | IoU | reference px | predicted px |\n|---|---|---|---|---|\n");
        for c in 0..self.confusion.k {
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} |\n",
                self.classes[c],
                pct(self.f1[c]),
                pct(self.iou[c]),
                self.confusion.truth_count(c),
                self.confusion.pred_count(c)
            ));
        }
        // Confusion matrix.
        s.push_str("\nConfusion matrix (rows: reference, columns: prediction):\n\n| |");
        for c in 0..self.confusion.k {
            s.push_str(&format!(" {} |", short(c)));
        }
        let any_missed = self.confusion.missed.iter().any(|&m| m > 0);
        if any_missed {
            s.push_str(" no prediction |");
        }
        s.push_str("\n|---|");
        for _ in 0..self.confusion.k + any_missed as usize {
            s.push_str("---|");
        }
        s.push('\n');
        for t in 0..self.confusion.k {
            s.push_str(&format!("| {} |", short(t)));
            for p in 0..self.confusion.k {
                s.push_str(&format!(" {} |", self.confusion.get(t, p)));
            }
            if any_missed {
                s.push_str(&format!(" {} |", self.confusion.missed[t]));
            }
            s.push('\n');
        }
        s
    }
}

/// A fraction as a percentage with one decimal, or "n/a".
fn pct(v: Option<f64>) -> String {
    match v {
        Some(x) => format!("{:.1}", 100.0 * x),
        None => "n/a".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-12)
    }

    /// Hand-computed case, k = 3:
    ///
    /// ```text
    ///            pred 0  pred 1  pred 2
    /// truth 0      5       1       0
    /// truth 1      2       3       1
    /// truth 2      0       0       0      (class 2: no reference)
    /// ```
    /// plus one pixel of truth 0 predicted as 255 (a miss) and two pixels of
    /// truth 255 (ignored).
    fn case() -> Confusion {
        let mut c = Confusion::new(3);
        let mut t = vec![];
        let mut p = vec![];
        let mut push = |tv: u8, pv: u8, n: usize| {
            for _ in 0..n {
                t.push(tv);
                p.push(pv);
            }
        };
        push(0, 0, 5);
        push(0, 1, 1);
        push(1, 0, 2);
        push(1, 1, 3);
        push(1, 2, 1);
        push(0, 255, 1);
        push(255, 0, 2);
        c.add_slices(&t, &p);
        c
    }

    #[test]
    fn hand_computed_matrix() {
        let c = case();
        assert_eq!(c.counts, vec![5, 1, 0, 2, 3, 1, 0, 0, 0]);
        assert_eq!(c.missed, vec![1, 0, 0]);
        assert_eq!(c.total(), 13);
        // OA = (5 + 3) / 13
        assert!(close(c.overall_accuracy(), 8.0 / 13.0));
        // class 0: TP 5, truth 7 (incl. the miss), pred 7 -> F1 = 10/14
        assert!(close(c.f1(0), 10.0 / 14.0));
        // IoU 0 = 5 / (7 + 7 - 5)
        assert!(close(c.iou(0), 5.0 / 9.0));
        // class 1: TP 3, truth 6, pred 4 -> F1 = 6/10, IoU = 3/7
        assert!(close(c.f1(1), 0.6));
        assert!(close(c.iou(1), 3.0 / 7.0));
        // class 2: no truth, one prediction -> F1 = 0, IoU = 0 (a real 0)
        assert!(close(c.f1(2), 0.0));
        assert!(close(c.iou(2), 0.0));
        assert!(close(c.precision(1), 0.75));
        assert!(close(c.recall(1), 0.5));
    }

    #[test]
    fn empty_class_is_none_not_zero_or_nan() {
        let mut c = Confusion::new(4);
        c.add(0, 0);
        c.add(0, 1);
        c.add(1, 1);
        // class 2 and 3: neither truth nor prediction
        assert_eq!(c.f1(2), None);
        assert_eq!(c.iou(3), None);
        // mean F1 over 0..3 skips class 2: (2/3 + 2/3) / 2
        assert!(close(c.mean_f1(&[0, 1, 2]), 2.0 / 3.0));
        // mIoU over the two defined classes: (1/2 + 1/2) / 2
        assert!(close(c.miou(), 0.5));
        let empty = Confusion::new(6);
        assert_eq!(empty.overall_accuracy(), None);
        assert_eq!(empty.mean_f1(&[0, 1]), None);
        assert_eq!(empty.miou(), None);
    }

    #[test]
    fn add_and_add_slices_agree_and_merge_adds() {
        let t: Vec<u8> = (0..1000u32).map(|i| ((i * 7) % 8) as u8).collect();
        let p: Vec<u8> = (0..1000u32).map(|i| ((i * 13 + 1) % 9) as u8).collect();
        let mut a = Confusion::new(6);
        for (&x, &y) in t.iter().zip(&p) {
            a.add(x, y);
        }
        let mut b = Confusion::new(6);
        b.add_slices(&t[..400], &p[..400]);
        let mut b2 = Confusion::new(6);
        b2.add_slices(&t[400..], &p[400..]);
        b.merge(&b2);
        assert_eq!(a, b);
    }

    #[test]
    fn report_markdown_and_json() {
        let mut c = Confusion::new(6);
        // imp surf perfect (4 px), building 2 right 2 wrong as imp, no car at all
        for _ in 0..4 {
            c.add(0, 0);
        }
        c.add(1, 1);
        c.add(1, 1);
        c.add(1, 0);
        c.add(1, 0);
        let table = ClassTable::isprs();
        let r = Report::new(&c, &table);
        assert_eq!(r.mean_f1_classes, vec![0, 1, 2, 3, 4]);
        // F1 imp = 8/10, building = 4/6
        assert!(close(r.mean_f1, (0.8 + 4.0 / 6.0) / 2.0));
        let md = r.to_markdown(&table);
        let mut lines = md.lines();
        assert_eq!(
            lines.next().unwrap(),
            "| imp surf | building | low_veg | tree | car | Overall |"
        );
        assert_eq!(lines.next().unwrap(), "|---|---|---|---|---|---|");
        assert_eq!(
            lines.next().unwrap(),
            "| 80.0 | 66.7 | n/a | n/a | n/a | 75.0 |"
        );
        let json = r.to_json();
        assert!(json.contains("null"), "{json}");
        assert!(!json.contains("NaN"));
        let back: Report = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
    }
}
