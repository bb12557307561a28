"""A deterministic multilingual arena-like demo set in the exact WSDM Cup layout.

Every row asks one short question in one of nine languages (English, Spanish, German, Russian,
Chinese, Japanese, Arabic, Hindi, Korean): what to see in a city, or a one-digit sum. The preferred
response answers it in the prompt's language. The other one fails in one of four ways:

- ``wrong_entity``: it talks about another city, or gives a wrong sum;
- ``wrong_language``: the right answer, but in another language;
- ``refusal``: a rude refusal;
- ``off_topic``: an unrelated sentence;

(the kinds are weighted so the easy, local signals dominate and a 270M model learns them in a few
hundred steps). Both responses are padded with neutral filler sentences in their own language, and
the winner ends up strictly longer on exactly half of the rows, independently of its position, so
"the longer response wins" scores 0.5. The winner sits in A on exactly half of the rows. Model
names are drawn independently of the outcome.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import ConfigError

KINDS = ("wrong_entity", "wrong_language", "refusal", "off_topic")
KIND_WEIGHTS = (0.2, 0.3, 0.25, 0.25)
SUM_SHARE = 0.4  # share of arithmetic questions; the rest ask about a city

MODELS = ("gpt-4o-2024-08-06", "claude-3-5-sonnet-20241022", "gemini-1.5-pro-002", "llama-3.1-405b-instruct",
          "qwen2.5-72b-instruct", "mistral-large-2407", "deepseek-v2.5", "gemma-2-27b-it",
          "command-r-plus-08-2024", "yi-lightning", "glm-4-plus", "gpt-4o-mini-2024-07-18")

# Per language: city names (same order everywhere), templates, a rude refusal, off-topic lines, fillers.
LANGUAGES = {
    "English": dict(
        cities=("Paris", "Tokyo", "Cairo", "Rome", "Moscow", "Berlin", "Seoul", "Mumbai"),
        ask_city="What is worth seeing in {x}?",
        city="In {x}, walk through the old town and visit the central market.",
        ask_sum="How much is {a} plus {b}?", sum="{a} plus {b} equals {c}.",
        refusal="No. I will not answer that. Ask someone else.",
        off_topic=("My favourite colour is blue.", "Cats sleep for most of the day."),
        filler=("I hope this helps.", "Enjoy your day.", "Feel free to ask more.")),
    "Spanish": dict(
        cities=("París", "Tokio", "El Cairo", "Roma", "Moscú", "Berlín", "Seúl", "Bombay"),
        ask_city="¿Qué vale la pena ver en {x}?",
        city="En {x}, pasea por el casco antiguo y visita el mercado central.",
        ask_sum="¿Cuánto es {a} más {b}?", sum="{a} más {b} es igual a {c}.",
        refusal="No. No voy a responder a eso. Pregunta a otra persona.",
        off_topic=("Mi color favorito es el azul.", "Los gatos duermen casi todo el día."),
        filler=("Espero que esto te ayude.", "Que tengas un buen día.", "Puedes preguntar más.")),
    "German": dict(
        cities=("Paris", "Tokio", "Kairo", "Rom", "Moskau", "Berlin", "Seoul", "Mumbai"),
        ask_city="Was lohnt sich in {x} anzusehen?",
        city="In {x} lohnt sich ein Spaziergang durch die Altstadt und ein Besuch des Zentralmarkts.",
        ask_sum="Wie viel ist {a} plus {b}?", sum="{a} plus {b} ergibt {c}.",
        refusal="Nein. Darauf antworte ich nicht. Frag jemand anderen.",
        off_topic=("Meine Lieblingsfarbe ist Blau.", "Katzen schlafen fast den ganzen Tag."),
        filler=("Ich hoffe, das hilft.", "Einen schönen Tag noch.", "Frag gern weiter.")),
    "Russian": dict(
        cities=("Париж", "Токио", "Каир", "Рим", "Москва", "Берлин", "Сеул", "Мумбаи"),
        ask_city="Что стоит посмотреть в городе {x}?",
        city="В городе {x} прогуляйтесь по старому центру и посетите центральный рынок.",
        ask_sum="Сколько будет {a} плюс {b}?", sum="{a} плюс {b} равно {c}.",
        refusal="Нет. Я не буду на это отвечать. Спросите кого-нибудь другого.",
        off_topic=("Мой любимый цвет синий.", "Кошки спят почти весь день."),
        filler=("Надеюсь, это поможет.", "Хорошего дня.", "Спрашивайте ещё.")),
    "Chinese": dict(
        cities=("巴黎", "东京", "开罗", "罗马", "莫斯科", "柏林", "首尔", "孟买"),
        ask_city="{x}有什么值得看的？",
        city="在{x}，可以逛逛老城区，再去中央市场看看。",
        ask_sum="{a}加{b}等于多少？", sum="{a}加{b}等于{c}。",
        refusal="不。我不会回答这个问题。去问别人吧。",
        off_topic=("我最喜欢的颜色是蓝色。", "猫一天大部分时间都在睡觉。"),
        filler=("希望这对你有帮助。", "祝你今天愉快。", "欢迎继续提问。")),
    "Japanese": dict(
        cities=("パリ", "東京", "カイロ", "ローマ", "モスクワ", "ベルリン", "ソウル", "ムンバイ"),
        ask_city="{x}で見る価値があるものは何ですか？",
        city="{x}では、旧市街を散歩して中央市場を訪れてください。",
        ask_sum="{a}足す{b}はいくつですか？", sum="{a}足す{b}は{c}です。",
        refusal="いいえ。それには答えません。他の人に聞いてください。",
        off_topic=("私の好きな色は青です。", "猫は一日のほとんどを寝て過ごします。"),
        filler=("お役に立てば幸いです。", "良い一日を。", "他にも質問してください。")),
    "Arabic": dict(
        cities=("باريس", "طوكيو", "القاهرة", "روما", "موسكو", "برلين", "سيول", "مومباي"),
        ask_city="ما الذي يستحق المشاهدة في {x}؟",
        city="في {x}، تجول في المدينة القديمة وزر السوق المركزي.",
        ask_sum="كم يساوي {a} زائد {b}؟", sum="{a} زائد {b} يساوي {c}.",
        refusal="لا. لن أجيب على هذا. اسأل شخصًا آخر.",
        off_topic=("لوني المفضل هو الأزرق.", "القطط تنام معظم اليوم."),
        filler=("أتمنى أن يساعدك هذا.", "أتمنى لك يومًا سعيدًا.", "لا تتردد في السؤال.")),
    "Hindi": dict(
        cities=("पेरिस", "टोक्यो", "काहिरा", "रोम", "मॉस्को", "बर्लिन", "सियोल", "मुंबई"),
        ask_city="{x} में देखने लायक क्या है?",
        city="{x} में पुराने शहर में घूमिए और केंद्रीय बाज़ार देखिए।",
        ask_sum="{a} और {b} का जोड़ कितना है?", sum="{a} और {b} का जोड़ {c} है।",
        refusal="नहीं। मैं इसका जवाब नहीं दूँगा। किसी और से पूछो।",
        off_topic=("मेरा पसंदीदा रंग नीला है।", "बिल्लियाँ दिन का ज़्यादातर समय सोती हैं।"),
        filler=("आशा है इससे मदद मिलेगी।", "आपका दिन शुभ हो।", "और भी पूछ सकते हैं।")),
    "Korean": dict(
        cities=("파리", "도쿄", "카이로", "로마", "모스크바", "베를린", "서울", "뭄바이"),
        ask_city="{x}에서 볼 만한 것은 무엇인가요?",
        city="{x}에서는 구시가지를 걸어 보고 중앙 시장을 방문해 보세요.",
        ask_sum="{a} 더하기 {b}는 얼마인가요?", sum="{a} 더하기 {b}는 {c}입니다.",
        refusal="아니요. 그건 대답하지 않겠습니다. 다른 사람에게 물어보세요.",
        off_topic=("제가 좋아하는 색은 파란색입니다.", "고양이는 하루 대부분을 잠으로 보냅니다."),
        filler=("도움이 되길 바랍니다.", "좋은 하루 보내세요.", "더 궁금한 점이 있으면 물어보세요.")),
}
LANGUAGE_NAMES = tuple(LANGUAGES)


def _question(rng: np.random.Generator, lang: str) -> tuple[str, dict]:
    """A prompt and the slots its answer needs (city index, or a, b, c for a sum)."""
    t = LANGUAGES[lang]
    if rng.random() < SUM_SHARE:
        a, b = (int(v) for v in rng.integers(2, 10, size=2))
        return t["ask_sum"].format(a=a, b=b), {"a": a, "b": b, "c": a + b}
    city = int(rng.integers(len(t["cities"])))
    return t["ask_city"].format(x=t["cities"][city]), {"city": city}


def _answer(lang: str, slots: dict) -> str:
    t = LANGUAGES[lang]
    if "city" in slots:
        return t["city"].format(x=t["cities"][slots["city"]])
    return t["sum"].format(**slots)


def _wrong_slots(rng: np.random.Generator, slots: dict) -> dict:
    if "city" in slots:
        return {"city": int((slots["city"] + rng.integers(1, 8)) % 8)}
    return {**slots, "c": slots["c"] + int(rng.choice([-3, -2, -1, 1, 2, 3]))}


def _loser(rng: np.random.Generator, lang: str, slots: dict, kind: str) -> tuple[str, str]:
    """(losing response, its language)."""
    t = LANGUAGES[lang]
    if kind == "wrong_entity":
        return _answer(lang, _wrong_slots(rng, slots)), lang
    if kind == "wrong_language":
        other = LANGUAGE_NAMES[(LANGUAGE_NAMES.index(lang) + rng.integers(1, len(LANGUAGE_NAMES))) % len(LANGUAGE_NAMES)]
        return _answer(other, slots), other
    if kind == "refusal":
        return t["refusal"], lang
    return str(rng.choice(t["off_topic"])), lang


def _pad(text: str, target: int, lang: str, rng: np.random.Generator) -> str:
    """Append filler sentences (cycling from a random one, so none repeats back to back) up to ``target``."""
    fillers = LANGUAGES[lang]["filler"]
    start = int(rng.integers(len(fillers)))
    for k in range(start, start + 100):
        if len(text) >= target:
            break
        text += " " + fillers[k % len(fillers)]
    return text


def _balance(win: str, lose: str, win_lang: str, lose_lang: str, winner_longer: bool,
             rng: np.random.Generator) -> tuple[str, str]:
    """Pad both to a similar length, then pad once more so the side ``winner_longer`` names is strictly longer."""
    target = max(len(win), len(lose)) + int(rng.integers(0, 24))
    win, lose = _pad(win, target, win_lang, rng), _pad(lose, target, lose_lang, rng)
    if winner_longer and len(win) <= len(lose):
        win = _pad(win, len(lose) + 1, win_lang, rng)
    elif not winner_longer and len(lose) <= len(win):
        lose = _pad(lose, len(win) + 1, lose_lang, rng)
    return win, lose


def _demo_id(seed: int, i: int) -> str:
    return hashlib.sha256(f"wsdm-demo:{seed}:{i}".encode()).hexdigest()


def make_demo_frame(n: int, seed: int = 0):
    """``n`` labelled pairs as a canonical frame (labels 0/1, exactly balanced positions)."""
    from .data import frame_from_records

    rng = np.random.default_rng(seed)
    winner_in_a = rng.permutation(np.arange(n) % 2 == 0)
    winner_longer = rng.permutation(np.arange(n) % 2 == 1)
    records = []
    for i in range(n):
        lang = LANGUAGE_NAMES[int(rng.integers(len(LANGUAGE_NAMES)))]
        prompt, slots = _question(rng, lang)
        kind = KINDS[int(rng.choice(len(KINDS), p=KIND_WEIGHTS))]
        lose, lose_lang = _loser(rng, lang, slots, kind)
        win, lose = _balance(_answer(lang, slots), lose, lang, lose_lang, bool(winner_longer[i]), rng)
        model_a, model_b = (str(m) for m in rng.choice(MODELS, size=2, replace=False))
        a, b = (win, lose) if winner_in_a[i] else (lose, win)
        records.append({"id": _demo_id(seed, i), "prompt": prompt, "response_a": a, "response_b": b,
                        "label": 0 if winner_in_a[i] else 1, "language": lang, "model_a": model_a,
                        "model_b": model_b})
    return frame_from_records(records, source="demo")


def to_wsdm_train(frame) -> pd.DataFrame:
    """Canonical single-turn frame -> WSDM train.parquet columns (plain strings, winner model_a/model_b)."""
    return pd.DataFrame({
        "id": frame["id"].astype(str), "prompt": [t[0] for t in frame["prompt"]],
        "response_a": [t[0] for t in frame["response_a"]], "response_b": [t[0] for t in frame["response_b"]],
        "winner": np.where(frame["label"].to_numpy() == 0, "model_a", "model_b"),
        "model_a": frame["model_a"].astype(str), "model_b": frame["model_b"].astype(str),
        "language": frame["language"].astype(str)})


def write_demo_dataset(out_dir: str | Path, n_train: int = 2000, n_test: int = 400, seed: int = 0) -> list[Path]:
    """Write train.parquet, test.parquet, sample_submission.csv (WSDM layout) and test_labels.parquet.

    test_labels.parquet (id, winner, language) is not part of the competition layout; it lets the
    demo score its test predictions.
    """
    from .io import atomic_write_parquet

    bad = [f"{name}={n}" for name, n in (("n_train", n_train), ("n_test", n_test)) if n < 1]
    if bad:
        raise ConfigError(f"{' and '.join(bad)}: the demo set needs at least 1 train and 1 test row")
    out = Path(out_dir)
    full = to_wsdm_train(make_demo_frame(n_train + n_test, seed))
    train, test = full.iloc[:n_train].reset_index(drop=True), full.iloc[n_train:].reset_index(drop=True)
    return [atomic_write_parquet(train, out / "train.parquet"),
            *_write_wsdm_test(test.assign(scored=True), out),
            atomic_write_parquet(test[["id", "winner", "language"]], out / "test_labels.parquet")]


def _write_wsdm_test(test: pd.DataFrame, out: Path) -> list[Path]:
    """test.parquet (id, prompt, response_a, response_b, scored) and sample_submission.csv (id, winner)."""
    from .io import atomic_write_csv, atomic_write_parquet

    submission = pd.DataFrame({"id": test["id"], "winner": "model_a"})
    return [atomic_write_parquet(test[["id", "prompt", "response_a", "response_b", "scored"]], out / "test.parquet"),
            atomic_write_csv(submission, out / "sample_submission.csv")]


def write_lmsys_dataset(out_dir: str | Path, n_train: int = 400, n_test: int = 48, seed: int = 0,
                        tie_share: float = 0.25) -> list[Path]:
    """Write train.csv, test.csv and sample_submission.csv in the LMSYS Chatbot Arena layout.

    Cells are JSON lists of turns, ids integers, labels the one-hot ``winner_model_a / winner_model_b /
    winner_tie``. A tie is a row whose two responses are the same correct answer (``tie_share`` of the
    rows): what a voter would call equally good. The test file has no labels and no model names, as on Kaggle.
    """
    import json

    from .io import atomic_write_csv

    if n_train < 1 or n_test < 1 or not 0 <= tie_share < 1:
        raise ConfigError(f"n_train={n_train}, n_test={n_test}, tie_share={tie_share}: the LMSYS demo set needs "
                          "at least 1 train and 1 test row and a tie share in [0, 1)")
    rng = np.random.default_rng(seed)
    frame = to_wsdm_train(make_demo_frame(n_train + n_test, seed))
    tie = rng.random(len(frame)) < tie_share
    winner_text = np.where(frame["winner"] == "model_a", frame["response_a"], frame["response_b"])
    frame.loc[tie, "response_a"] = frame.loc[tie, "response_b"] = winner_text[tie]
    table = pd.DataFrame({"id": rng.choice(np.arange(30_000, 30_000 + 50 * len(frame)), len(frame), replace=False),
                          "model_a": frame["model_a"], "model_b": frame["model_b"],
                          **{c: [json.dumps([t], ensure_ascii=False) for t in frame[c]]
                             for c in ("prompt", "response_a", "response_b")},
                          "winner_model_a": ((frame["winner"] == "model_a") & ~tie).astype(int),
                          "winner_model_b": ((frame["winner"] == "model_b") & ~tie).astype(int),
                          "winner_tie": tie.astype(int)})
    train, test = table.iloc[:n_train], table.iloc[n_train:]
    out = Path(out_dir)
    sample = pd.DataFrame({"id": test["id"], "winner_model_a": 1 / 3, "winner_model_b": 1 / 3, "winner_tie": 1 / 3})
    return [atomic_write_csv(train, out / "train.csv"),
            atomic_write_csv(test[["id", "prompt", "response_a", "response_b"]], out / "test.csv"),
            atomic_write_csv(sample, out / "sample_submission.csv")]


HIDDEN_UNSCORED_SHARE = 0.1  # rows with scored=False (Kaggle does not publish the real share)


def write_hidden_test(out_dir: str | Path, n_rows: int = 25_000, seed: int = 1) -> list[Path]:
    """test.parquet and sample_submission.csv of a hidden test in the WSDM layout: what the competition
    rerun reads instead of the public test rows.

    Ids are distinct shuffled integers (an int64 column, as in the WSDM test file, so a join by
    position or an id read as a float shows up); ``scored`` is False on about
    ``HIDDEN_UNSCORED_SHARE`` of the rows, which still need a prediction. No labels are written.
    """
    if n_rows < 1:
        raise ConfigError(f"n_rows={n_rows}: a hidden test needs at least 1 row")
    rng = np.random.default_rng(seed)
    test = to_wsdm_train(make_demo_frame(n_rows, seed))
    test["id"] = rng.choice(np.arange(10_000, 10_000 + 40 * n_rows, dtype=np.int64), size=n_rows, replace=False)
    test["scored"] = rng.random(n_rows) >= HIDDEN_UNSCORED_SHARE
    return _write_wsdm_test(test, Path(out_dir))
