//! Class weights from the training labels: median frequency balancing.

use crate::train::augment::IGNORE;

/// How often each class occurs in a set of label images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassFrequency {
    /// Labelled pixels of each class.
    pub pixels: Vec<u64>,
    /// Labelled pixels of the images in which each class occurs.
    pub image_pixels: Vec<u64>,
    /// Images counted.
    pub images: u64,
}

impl ClassFrequency {
    /// Nothing counted yet, for `k` classes.
    pub fn new(k: usize) -> Self {
        Self {
            pixels: vec![0; k],
            image_pixels: vec![0; k],
            images: 0,
        }
    }

    /// Counts one label image: class channels, [`IGNORE`] and ids `>= K`
    /// not counted.
    pub fn add_image(&mut self, labels: &[u8]) {
        let mut counts = vec![0u64; self.pixels.len()];
        for &l in labels {
            if l != IGNORE {
                if let Some(c) = counts.get_mut(l as usize) {
                    *c += 1;
                }
            }
        }
        self.add_counts(&counts);
    }

    /// Counts one label image given by its per-class pixel counts.
    pub fn add_counts(&mut self, counts: &[u64]) {
        let total: u64 = counts.iter().sum();
        for (c, &n) in counts.iter().enumerate() {
            self.pixels[c] += n;
            if n > 0 {
                self.image_pixels[c] += total;
            }
        }
        self.images += 1;
    }

    /// Median frequency balancing (Eigen and Fergus, ICCV 2015):
    /// `w_c = median(f) / f_c`, where `f_c` is the number of pixels of class
    /// `c` over the number of labelled pixels in the images where `c`
    /// occurs, and the median runs over the classes that occur (the mean of
    /// the two middle values for an even count). A class that never occurs
    /// gets weight 0 (it has no pixel to weight). `None` when no class
    /// occurs at all.
    pub fn median_frequency_weights(&self) -> Option<Vec<f32>> {
        let f: Vec<Option<f64>> = self
            .pixels
            .iter()
            .zip(&self.image_pixels)
            .map(|(&n, &t)| (n > 0).then(|| n as f64 / t as f64))
            .collect();
        let mut seen: Vec<f64> = f.iter().flatten().copied().collect();
        if seen.is_empty() {
            return None;
        }
        seen.sort_by(f64::total_cmp);
        let m = seen.len();
        let median = if m % 2 == 1 {
            seen[m / 2]
        } else {
            (seen[m / 2 - 1] + seen[m / 2]) / 2.0
        };
        Some(
            f.iter()
                .map(|v| v.map_or(0.0, |v| (median / v) as f32))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_frequency_by_hand() {
        let mut f = ClassFrequency::new(4);
        // image 1: 6 px of class 0, 2 of class 1, 2 ignored
        f.add_image(&[0, 0, 0, 0, 0, 0, 1, 1, IGNORE, IGNORE]);
        // image 2: 2 px of class 0, 8 of class 2, one id beyond the classes
        f.add_image(&[0, 0, 2, 2, 2, 2, 2, 2, 2, 2, 9]);
        assert_eq!(f.pixels, vec![8, 2, 8, 0]);
        assert_eq!(f.image_pixels, vec![18, 8, 10, 0]);
        // f = 8/18, 2/8, 8/10 -> sorted 0.25, 0.444, 0.8: median 4/9
        let w = f.median_frequency_weights().unwrap();
        let want = [1.0, (4.0 / 9.0) / 0.25, (4.0 / 9.0) / 0.8, 0.0];
        for (a, b) in w.iter().zip(want) {
            assert!((*a as f64 - b).abs() < 1e-6, "{w:?}");
        }
    }

    #[test]
    fn an_even_count_takes_the_middle_mean() {
        let mut f = ClassFrequency::new(2);
        f.add_counts(&[10, 30]);
        // f = 0.25, 0.75 -> median 0.5
        let w = f.median_frequency_weights().unwrap();
        assert!(
            (w[0] - 2.0).abs() < 1e-6 && (w[1] - 2.0 / 3.0).abs() < 1e-6,
            "{w:?}"
        );
        assert_eq!(ClassFrequency::new(3).median_frequency_weights(), None);
    }
}
