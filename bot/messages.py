"""Every text a user sees, in 繁體中文 (zh-TW, the default) and English, and verdict → text.

Adapters and the web page call `t(key, lang)` and `format_verdict(verdict, lang)`; nothing else
in the bot writes user-facing sentences, so a translation fix happens in one place.
"""

from __future__ import annotations

from typing import Any

from core.contract import DEFAULT_LANG, Verdict



def pick_lang(code: str | None, default: str = DEFAULT_LANG) -> str:
    """Map a platform language code (Telegram `language_code`, LINE profile `language`) to ours."""
    if not code:
        return default
    code = code.lower()
    if code.startswith("zh"):
        return "zh-TW"
    # Anyone whose app speaks something else reads English more easily than Chinese.
    return "en"


TEXTS: dict[str, dict[str, str]] = {
    "help": {
        "zh-TW": (
            "真的假不了 🔍\n"
            "把可疑的照片傳給我或轉傳給我，我會判斷照片中的人臉是真人照片，還是 AI（GAN）生成的假臉。\n"
            "• 以「檔案」傳送可保留更多細節，結果更可靠。\n"
            "• 在群組裡：回覆一張圖片並輸入 /check 就能檢查。\n"
            "• 群組模式（限管理員）：/mode all 全部回覆、/mode fake 只回覆可疑的（預設）、/mode off 關閉。\n"
            "結果只是參考，不是最終證據。"
        ),
        "en": (
            "Zhenjia (真的假不了) 🔍\n"
            "Send or forward me a doubtful picture: I tell you whether the face in it is a real photo "
            "or AI (GAN) generated.\n"
            "• Sending the picture as a file keeps more detail and gives a more reliable answer.\n"
            "• In groups: reply to a picture with /check.\n"
            "• Group mode (admins only): /mode all answers every face, /mode fake only suspicious ones "
            "(default), /mode off stays quiet.\n"
            "The answer is a first opinion, not proof."
        ),
    },
    "line_help": {
        "zh-TW": (
            "真的假不了 🔍\n"
            "傳一張有人臉的照片給我，我會判斷是真人照片還是 AI（GAN）生成的假臉。\n"
            "群組指令：「/mode all」全部回覆、「/mode fake」只回覆可疑的（預設）、「/mode off」關閉"
            "（也可以用「模式 全部／可疑／關閉」）；「/leave」或「離開」讓我離開群組。\n"
            "結果只是參考，不是最終證據。"
        ),
        "en": (
            "Zhenjia (真的假不了) 🔍\n"
            "Send me a picture with a face: I tell you whether it is a real photo or AI (GAN) generated.\n"
            "Group commands: \"/mode all\" answers every face, \"/mode fake\" only suspicious ones (default), "
            "\"/mode off\" stays quiet; \"/leave\" makes me leave the group.\n"
            "The answer is a first opinion, not proof."
        ),
    },
    "line_join": {
        "zh-TW": (
            "大家好，我是「真的假不了」🔍 我會檢查群組裡轉傳的照片，判斷人臉是真人還是 AI 生成的假臉。\n"
            "預設只在照片可疑時才說話，不會打擾大家。\n"
            "「/mode all」每張都回覆、「/mode off」關閉；想請我離開，輸入「/leave」或「離開」即可。"
        ),
        "en": (
            "Hi, I'm Zhenjia (真的假不了) 🔍 I check pictures forwarded in this group and tell whether a face "
            "is a real photo or AI generated.\n"
            "By default I only speak when a picture looks suspicious.\n"
            "\"/mode all\" answers every picture, \"/mode off\" keeps me quiet; type \"/leave\" to make me "
            "leave."
        ),
    },
    "leaving": {"zh-TW": "好的，我離開了。需要時再邀請我 👋", "en": "OK, I'm leaving. Invite me again any time 👋"},
    "not_image": {
        "zh-TW": "我只能檢查圖片和短片（照片、圖片檔、影片或 GIF）。請傳一張有人臉的照片或短片給我。",
        "en": "I can only check pictures and clips (photos, image files, videos, GIFs). "
              "Please send me one with a face.",
    },
    "in_frames": {"zh-TW": "（檢查了 {n} 個畫面）", "en": " (checked in {n} frames)"},
    "check_needs_reply": {
        "zh-TW": "請「回覆」一張圖片並輸入 /check，我就會檢查那張圖片。",
        "en": "Reply to a picture with /check and I will check that picture.",
    },
    "too_large": {
        "zh-TW": "這個檔案太大了（上限 {limit_mb} MB），請傳較小的版本。",
        "en": "This file is too large (limit {limit_mb} MB). Please send a smaller version.",
    },
    "busy": {
        "zh-TW": "現在排隊檢查的圖片太多了，請過一兩分鐘再傳一次 🙏",
        "en": "Too many pictures are waiting to be checked right now. Please try again in a minute or two 🙏",
    },
    "unavailable": {
        "zh-TW": "檢查服務正在重新啟動，請過一分鐘再傳一次 🙏",
        "en": "The checker is restarting. Please try again in a minute 🙏",
    },
    "rate_limited": {
        "zh-TW": "傳得有點快喔，這張和接下來一分鐘內的圖片不會檢查，請稍等一分鐘再傳 🙏",
        "en": "That's a lot of pictures at once: this one and the ones in the next minute are not checked. "
              "Please wait a minute and send them again 🙏",
    },
    "send_again": {
        "zh-TW": "抱歉，檢查服務剛剛重新啟動，這張圖片的檢查遺失了，請再傳一次 🙏",
        "en": "Sorry, the checker restarted and lost the check of this picture. Please send it again 🙏",
    },
    "send_again_album": {
        "zh-TW": "抱歉，檢查服務剛剛重新啟動，這組圖片的檢查遺失了，請再傳一次 🙏",
        "en": "Sorry, the checker restarted and lost the check of these pictures. Please send them again 🙏",
    },
    "download_failed": {
        "zh-TW": "抱歉，我沒辦法下載這張圖片，請再傳一次。",
        "en": "Sorry, I could not download this picture. Please send it again.",
    },
    "mode_set": {
        "zh-TW": "已設定群組模式：{mode}（{desc}）",
        "en": "Group mode set to {mode} ({desc}).",
    },
    "mode_show": {
        "zh-TW": "目前的群組模式：{mode}（{desc}）。管理員可用 /mode all|fake|off 更改。",
        "en": "Current group mode: {mode} ({desc}). Admins can change it with /mode all|fake|off.",
    },
    "mode_admins_only": {
        "zh-TW": "只有群組管理員可以更改模式。",
        "en": "Only group admins can change the mode.",
    },
    "mode_bad": {
        "zh-TW": "用法：/mode all（全部回覆）、/mode fake（只回覆可疑的）、/mode off（關閉）",
        "en": "Usage: /mode all (answer every face), /mode fake (only suspicious ones), /mode off (quiet)",
    },
    "mode_desc_all": {"zh-TW": "每張有人臉的圖片都回覆", "en": "answer every picture with a face"},
    "mode_desc_fake": {"zh-TW": "只回覆可疑的圖片", "en": "answer only suspicious pictures"},
    "mode_desc_off": {"zh-TW": "不主動回覆，/check 仍可使用", "en": "quiet; /check still works"},
    # LINE has neither /check nor admins the bot can see: its own wording (ChatFlow.text prefers `line_*`).
    "line_mode_show": {
        "zh-TW": "目前的群組模式：{mode}（{desc}）。可用 /mode all|fake|off（或「模式 全部／可疑／關閉」）更改。",
        "en": "Current group mode: {mode} ({desc}). Change it with /mode all|fake|off.",
    },
    "line_mode_bad": {
        "zh-TW": "用法：/mode all（全部回覆）、/mode fake（只回覆可疑的）、/mode off（關閉）；"
                 "也可以輸入「模式 全部／可疑／關閉」。",
        "en": "Usage: /mode all (answer every face), /mode fake (only suspicious ones), /mode off (quiet)",
    },
    "line_mode_desc_off": {"zh-TW": "不主動回覆", "en": "quiet"},
    # verdict parts
    "v_fake": {"zh-TW": "⚠️ 很可能是 AI 生成的假臉", "en": "⚠️ Likely an AI-generated (fake) face"},
    "v_real": {"zh-TW": "✅ 看起來是真實的照片", "en": "✅ Looks like a real photo"},
    "v_real_clip": {"zh-TW": "✅ 影片中的人臉看起來是真的", "en": "✅ The faces in this clip look real"},
    "v_unsure": {"zh-TW": "🤔 無法確定是真是假", "en": "🤔 Can't tell whether it's real or fake"},
    "v_no_face": {
        "zh-TW": "🙈 找不到人臉。我只判斷照片中的人臉是否為 AI 生成。",
        "en": "🙈 No face found. I only judge whether faces are AI generated.",
    },
    "v_no_face_clip": {
        "zh-TW": "🙈 影片中找不到人臉。我只判斷人臉是否為 AI 生成。",
        "en": "🙈 No face found in this clip. I only judge whether faces are AI generated.",
    },
    "v_unreadable": {"zh-TW": "❌ 無法讀取這張圖片。", "en": "❌ I could not read this picture."},
    "v_unreadable_clip": {"zh-TW": "❌ 無法讀取這段影片。", "en": "❌ I could not read this clip."},
    "v_error": {
        "zh-TW": "😥 抱歉，這次檢查失敗了，請稍後再傳一次。",
        "en": "😥 Sorry, the check failed this time. Please send the picture again later.",
    },
    "p_fake": {"zh-TW": "（AI 生成機率 {p}%）", "en": " (probability of AI: {p}%)"},
    "face_line": {"zh-TW": "臉 {i}：{label}（{p}%）", "en": "Face {i}: {label} ({p}%)"},
    "label_fake": {"zh-TW": "疑似假臉", "en": "likely fake"},
    "label_real": {"zh-TW": "真實", "en": "real"},
    "label_unsure": {"zh-TW": "不確定", "en": "unsure"},
    "picture_n": {"zh-TW": "第 {i} 張：", "en": "Picture {i}: "},
    "album_head": {"zh-TW": "這組 {n} 張圖片的結果：", "en": "Results for these {n} pictures:"},
    "cached": {"zh-TW": "（這張圖之前檢查過）", "en": "(this picture was checked before)"},
    "unsure_hint": {"zh-TW": "請勿單憑這個結果下定論。", "en": "Please don't rely on this answer alone."},
    "send_as_file": {
        "zh-TW": "💡 以「檔案」傳送原圖可保留更多細節。",
        "en": "💡 Sending the original as a file keeps more detail.",
    },
    "footer": {"zh-TW": "結果僅供參考", "en": "A first opinion, not proof"},
    # reasons (codes from core.contract.REASONS)
    "r_face_too_small": {"zh-TW": "人臉太小，難以判斷。", "en": "The face is too small to judge."},
    "r_heavily_compressed": {
        "zh-TW": "圖片壓縮得很嚴重，細節不足。",
        "en": "The picture is heavily compressed; details are lost.",
    },
    "r_not_an_image": {"zh-TW": "這不是我能讀取的圖片或影片格式。",
                       "en": "This is not a picture or clip format I can read."},
    "r_truncated": {"zh-TW": "檔案不完整或已損毀。", "en": "The file is incomplete or damaged."},
    "r_too_large_bytes": {"zh-TW": "檔案太大了。", "en": "The file is too large."},
    "r_too_many_pixels": {"zh-TW": "圖片尺寸太大了。", "en": "The picture has too many pixels."},
    "r_animated_first_frame": {
        "zh-TW": "這是動畫，只檢查了第一格畫面。",
        "en": "This is an animation; only its first frame was checked.",
    },
    "r_image_expired": {
        "zh-TW": "排隊太久，圖片已過期，請再傳一次。",
        "en": "The picture waited too long and expired. Please send it again.",
    },
    "r_worker_failed": {"zh-TW": "檢查程式出錯了。", "en": "The checker failed."},
    "r_several_faces": {"zh-TW": "有好幾張臉，每張臉分別判斷。", "en": "Several faces: each is judged on its own."},
    "r_clip_too_long": {"zh-TW": "影片太長了，請傳較短的片段。", "en": "The clip is too long; please send a shorter one."},
    "r_too_many_frames": {"zh-TW": "影片的畫面數太多了。", "en": "The clip has too many frames."},
    # web API error messages (bot/web.py: `web_<error code>`; its too_large and busy use the entries above)
    "web_missing_image": {
        "zh-TW": "請上傳一張圖片（表單欄位 image，或以圖片類型直接傳送）。",
        "en": "Please upload an image (form field 'image', or the raw bytes with an image content type).",
    },
    "web_empty": {"zh-TW": "上傳的檔案是空的。", "en": "The uploaded file is empty."},
    "web_not_an_image": {
        "zh-TW": "這不是可以讀取的圖片或影片格式（請用 JPEG、PNG、WebP、GIF、MP4、MOV 或 WebM）。",
        "en": "This is not an image or video format we can read (use JPEG, PNG, WebP, GIF, MP4, MOV or WebM).",
    },
    "web_unsupported_media_type": {
        "zh-TW": "請以圖片或影片類型（image/*、video/*）或 multipart 表單上傳。",
        "en": "Send an image or video content type (image/*, video/*) or a multipart form.",
    },
    "web_timeout": {
        "zh-TW": "檢查還沒完成，請稍後用 request_id 查詢結果。",
        "en": "The check is not finished yet; poll with the request_id for the result.",
    },
    "web_unknown_request": {
        "zh-TW": "找不到這個檢查（可能已過期）。",
        "en": "No such check (it may have expired).",
    },
    "web_marked_gone": {
        "zh-TW": "標記過的圖片已不存在（只保留幾分鐘）。",
        "en": "The marked image is gone (it is kept only for a few minutes).",
    },
    "web_bad_request": {"zh-TW": "請求格式錯誤。", "en": "Malformed request."},
    "web_not_found": {"zh-TW": "找不到這個網址。", "en": "Not found."},
    "web_method_not_allowed": {"zh-TW": "不支援這個方法。", "en": "Method not allowed."},
}


def t(key: str, lang: str = DEFAULT_LANG, **fmt: Any) -> str:
    """The text for `key` in `lang` (zh-TW when the language is unknown)."""
    texts = TEXTS[key]
    text = texts.get(lang) or texts[DEFAULT_LANG]
    return text.format(**fmt) if fmt else text


def _pct(p: float | None) -> str:
    # Never print 0% or 100%: a calibrated model is never that sure, and users read it as proof.
    if p is None:
        return "?"
    return str(min(99, max(1, round(p * 100))))


def headline(verdict: Verdict, lang: str, clip: bool = False) -> str:
    """One line: the overall answer with its calibrated probability (and, for a clip, how many frames).

    A clip is one the worker sampled frames of, or one the user sent as a video (an unreadable clip has none).
    """
    key = f"v_{verdict.label}"
    head = t(key + "_clip" if (clip or verdict.frames) and key + "_clip" in TEXTS else key, lang)
    if verdict.label in ("fake", "real", "unsure") and verdict.p_fake is not None:
        head += t("p_fake", lang, p=_pct(verdict.p_fake))
    if verdict.frames:
        head += t("in_frames", lang, n=verdict.frames)
    return head


def format_verdict(verdict: Verdict, lang: str = DEFAULT_LANG, sent_as_photo: bool = False,
                   clip: bool = False) -> str:
    """The full reply for one picture or clip: headline, per-face lines, reasons, hints, footer."""
    lines = [headline(verdict, lang, clip)]
    if len(verdict.faces) > 1:
        for i, face in enumerate(verdict.faces, 1):
            lines.append(t("face_line", lang, i=i, label=t(f"label_{face.label}", lang), p=_pct(face.p_fake)))
    for reason in verdict.reasons:
        key = f"r_{reason}"
        if key in TEXTS and reason != "several_faces":
            lines.append(t(key, lang))
    if verdict.label == "unsure":
        lines.append(t("unsure_hint", lang))
    if sent_as_photo and (verdict.label == "unsure" or "heavily_compressed" in verdict.reasons):
        lines.append(t("send_as_file", lang))
    if verdict.cached:
        lines.append(t("cached", lang))
    if verdict.label in ("fake", "real", "unsure"):
        lines.append(t("footer", lang))
    return "\n".join(lines)


def format_album(verdicts: list[Verdict], lang: str = DEFAULT_LANG) -> str:
    """One combined reply for an album / image set: one line per picture."""
    lines = [t("album_head", lang, n=len(verdicts))]
    for i, verdict in enumerate(verdicts, 1):
        line = t("picture_n", lang, i=i) + headline(verdict, lang)
        extra = [t(f"r_{r}", lang) for r in verdict.reasons if f"r_{r}" in TEXTS and r != "several_faces"]
        if extra:
            line += " " + " ".join(extra)
        lines.append(line)
    if any(v.label in ("fake", "real", "unsure") for v in verdicts):
        lines.append(t("footer", lang))
    return "\n".join(lines)


def is_suspicious(verdict: Verdict) -> bool:
    """What group mode `fake` answers: faces judged fake, or faces we cannot vouch for."""
    return verdict.label in ("fake", "unsure")
