//! Patient rules as pure functions: the search form of a name.

/// The form of a name that name search matches against: lower case, common Latin
/// accents folded ("José Álvarez" -> "jose alvarez"), words separated by one space. A
/// receptionist types "jose" and finds "José".
pub fn search_name(given: &str, family: &str) -> String {
    let folded: String = format!("{given} {family}")
        .chars()
        .map(fold)
        .collect::<String>()
        .to_lowercase();
    folded.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn fold(c: char) -> char {
    match c {
        'á' | 'à' | 'â' | 'ã' | 'ä' | 'å' => 'a',
        'Á' | 'À' | 'Â' | 'Ã' | 'Ä' | 'Å' => 'A',
        'é' | 'è' | 'ê' | 'ë' => 'e',
        'É' | 'È' | 'Ê' | 'Ë' => 'E',
        'í' | 'ì' | 'î' | 'ï' => 'i',
        'Í' | 'Ì' | 'Î' | 'Ï' => 'I',
        'ó' | 'ò' | 'ô' | 'õ' | 'ö' => 'o',
        'Ó' | 'Ò' | 'Ô' | 'Õ' | 'Ö' => 'O',
        'ú' | 'ù' | 'û' | 'ü' => 'u',
        'Ú' | 'Ù' | 'Û' | 'Ü' => 'U',
        'ç' => 'c',
        'Ç' => 'C',
        'ñ' => 'n',
        'Ñ' => 'N',
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accents_and_case_are_folded() {
        assert_eq!(search_name("José", "Álvarez"), "jose alvarez");
        assert_eq!(
            search_name("  MARIA  da", "Conceição "),
            "maria da conceicao"
        );
    }
}
