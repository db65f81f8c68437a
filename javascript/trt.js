// Refresh the WebUI's UNet dropdown (sd_unet) after an engine was built or deleted, so new engines
// appear as "[TRT] ..." without a restart. The dropdown has its own refresh button, #refresh_sd_unet.
function trtRefreshUnetList() {
    const button = gradioApp().querySelector("#refresh_sd_unet");
    if (button) button.click();
    return [];
}
