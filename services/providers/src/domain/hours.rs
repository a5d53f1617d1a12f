//! The working hours of one weekday, as pure functions.

/// A wall-clock interval in the clinic's time zone, minutes since midnight, end exclusive.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct Interval {
    pub start_minute: u16,
    pub end_minute: u16,
}

/// Why a day's working hours are not acceptable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoursError {
    OutOfDay { index: usize },
    Empty { index: usize },
    Overlap { first: usize, second: usize },
}

/// Checks one weekday's intervals (each within 00:00..24:00, non-empty, none
/// overlapping) and returns them sorted by start.
pub fn working_day(intervals: &[(i32, i32)]) -> Result<Vec<Interval>, HoursError> {
    let mut checked = Vec::with_capacity(intervals.len());
    for (index, &(start, end)) in intervals.iter().enumerate() {
        if !(0..=1440).contains(&start) || !(0..=1440).contains(&end) {
            return Err(HoursError::OutOfDay { index });
        }
        if end <= start {
            return Err(HoursError::Empty { index });
        }
        let (start_minute, end_minute) = (start as u16, end as u16);
        checked.push((
            index,
            Interval {
                start_minute,
                end_minute,
            },
        ));
    }
    checked.sort_by_key(|(_, i)| *i);
    for pair in checked.windows(2) {
        let ((first, a), (second, b)) = (pair[0], pair[1]);
        if b.start_minute < a.end_minute {
            return Err(HoursError::Overlap {
                first: first.min(second),
                second: first.max(second),
            });
        }
    }
    Ok(checked.into_iter().map(|(_, i)| i).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_shifts_are_sorted() {
        let day = working_day(&[(13 * 60, 17 * 60), (8 * 60, 12 * 60)]).unwrap();
        assert_eq!(day[0].start_minute, 480);
        assert_eq!(day.len(), 2);
    }

    #[test]
    fn touching_intervals_are_fine_overlapping_ones_are_not() {
        assert!(working_day(&[(480, 720), (720, 900)]).is_ok());
        assert_eq!(
            working_day(&[(480, 721), (720, 900)]),
            Err(HoursError::Overlap {
                first: 0,
                second: 1
            })
        );
    }

    #[test]
    fn intervals_stay_within_one_day_and_are_not_empty() {
        assert_eq!(
            working_day(&[(600, 600)]),
            Err(HoursError::Empty { index: 0 })
        );
        assert_eq!(
            working_day(&[(-1, 600)]),
            Err(HoursError::OutOfDay { index: 0 })
        );
        assert_eq!(
            working_day(&[(600, 1441)]),
            Err(HoursError::OutOfDay { index: 0 })
        );
    }
}
