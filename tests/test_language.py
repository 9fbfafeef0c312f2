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
