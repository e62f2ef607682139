"""The real-model quickstart's checks, on hand-made audit results (the run itself is too slow for CI)."""

from forgetkit.quickstart.real import summarise


def audit_side(forget, retain, holdout):
    def summary(rouge, el10):
        return {"summary": {"el10": el10, "em": 0.5, "rouge_l": rouge, "canary_exposure": 1.0}}
    return {"sets": {"forget": summary(*forget), "retain": summary(*retain), "holdout": summary(*holdout)},
            "verdict": {"verdict": "forgotten", "failed": []}}


def general(accuracy, rouge=0.5):
    return {"accuracy": accuracy, "questions": 32, "rouge_l_vs_pretrained": rouge, "answers": ["x"]}


def test_checks_follow_the_targets():
    results = {"base": audit_side((0.8, 0.2), (0.8, 0.2), (0.05, 0.0)),
               "unlearned": audit_side((0.15, 0.03), (0.73, 0.2), (0.0, 0.0))}
    taught = {"epochs": 8, "answer_accuracy": 0.98, "seconds": 160.0}
    out = summarise(results, {"pretrained": general(1.0), "taught": general(0.9), "unlearned": general(0.96)}, taught, 500.0)
    # forget ROUGE-L 0.8 -> 0.15 is 81% down, EL10 0.2 -> 0.03 85%; retain 0.8 -> 0.73 is 8.75%; general 1.00 -> 0.96 is 4%.
    assert out["checks"] == {"forget EL10 down >= 80%": True, "forget ROUGE-L down >= 80%": True,
                             "retain ROUGE-L within 10%": True,
                             "general knowledge within 5% of the pretrained model": True, "under 20 minutes": True}
    assert "answers" not in out["general_knowledge"]["pretrained"]  # the answers stay out of quickstart.json
    out = summarise(results, {"pretrained": general(1.0), "taught": general(0.9), "unlearned": general(0.94)}, taught, 1300.0)
    assert not out["checks"]["general knowledge within 5% of the pretrained model"] and not out["checks"]["under 20 minutes"]


def test_a_retain_drop_over_10_percent_fails():
    results = {"base": audit_side((0.8, 0.2), (0.8, 0.2), (0.05, 0.0)),
               "unlearned": audit_side((0.1, 0.0), (0.7, 0.2), (0.0, 0.0))}  # retain 0.8 -> 0.7: 12.5% down
    out = summarise(results, {"pretrained": general(1.0), "taught": general(1.0), "unlearned": general(1.0)},
                    {"epochs": 8, "answer_accuracy": 0.98, "seconds": 1.0}, 1.0)
    assert not out["checks"]["retain ROUGE-L within 10%"] and out["checks"]["forget ROUGE-L down >= 80%"]
