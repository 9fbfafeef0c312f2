"""The language-consistency measurement: word-level language shares of English, German, Chinese and mixed text."""

from engine.train.language import detect_language, language_share


def test_single_language_texts():
    assert detect_language("The derivative of x squared is two x. So we get 4.") == "en"
    assert detect_language("Das ist ein schöner Tag. Wir rechnen jetzt weiter.") == "de"
    assert detect_language("我们需要计算这个积分。") == "zh"
    assert language_share("我们需要计算这个积分。", "zh") == 1.0
    assert language_share("Das ist ein schöner Tag. Wir rechnen jetzt weiter.", "en") == 0.0


def test_mixed_texts_and_no_words():
    share = language_share("我们需要计算 the derivative of this function 然后代入。", "zh")
    assert 0.5 < share < 1.0
    mixed = "First we compute the sum. Dann addieren wir die beiden Zahlen zusammen. Finally the answer is 5."
    assert 0.3 < language_share(mixed, "en") < 0.8
    assert detect_language("12 + 3 = 15") is None
    assert language_share("12 + 3 = 15", "en") == 1.0
    assert language_share("我们需要计算这个积分。", "zh-CN") == 1.0


def test_kanji_beside_kana_are_japanese_and_han_alone_is_chinese():
    assert language_share("これは日本語です。", "ja") == 1.0
    assert detect_language("日本語を話します。") == "ja"
    # 这是中文 is Chinese (no kana in its sentence); the 8 characters of これは日本語です are Japanese: 4 of 12.
    assert language_share("这是中文。これは日本語です。", "zh") == 4 / 12
