// Refresh the WebUI's UNet dropdown (sd_unet) after an engine was built or deleted, so new engines
// appear as "[TRT] ..." without a restart. The dropdown has its own refresh button, #refresh_sd_unet.
function trtRefreshUnetList() {
    const button = gradioApp().querySelector("#refresh_sd_unet");
    if (button) button.click();
    return [];
}

// Re-read the LoRA picker's list each time the TensorRT tab is opened, so LoRAs added after the WebUI
// started are offered (the tab's hidden #trt_lora_refresh button does it; onUiTabChange is the WebUI's).
onUiTabChange(function () {
    const tab = get_uiCurrentTabContent();
    const button = gradioApp().querySelector("#trt_lora_refresh");
    if (tab && tab.id === "tab_tensorrt" && button) button.click();
});
